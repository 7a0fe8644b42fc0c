// Command plot draws the gate-cycle figure from the lines hack/figure's test
// prints (FIGMETA, FIGDATA): per run (without the driver, with it, host
// traffic), every packet's arrival behind the NIC folded into the 1 ms gate
// cycle, one row per application priority, over the gate windows of the three
// traffic classes. The SVG is written by hand: no plotting dependency for one
// scatter plot.
//
//	go run ./hack/figure/plot -in docs/figures/gate-cycle.dat -out docs/figures/gate-cycle.svg
package main

import (
	"bufio"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
)

type point struct {
	prio  int
	phase int64 // ns into the cycle
}

var titles = map[string]string{
	"without-proxy": "Pod traffic, without the driver",
	"with-proxy":    "Pod traffic, with the driver (saver + restorer)",
	"host":          "Host traffic with the same priorities (reference)",
}

var order = []string{"without-proxy", "with-proxy", "host"}

// Class colours: class 0 (best effort) grey, class 1 blue, class 2 orange.
var colours = []string{"#9e9e9e", "#1f77b4", "#ff7f0e"}

func main() {
	in := flag.String("in", "docs/figures/gate-cycle.dat", "FIGMETA/FIGDATA lines")
	out := flag.String("out", "docs/figures/gate-cycle.svg", "SVG to write")
	flag.Parse()
	data, meta, err := read(*in)
	if err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, []byte(svg(data, meta)), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "plot:", err)
		os.Exit(1)
	}
}

func read(path string) (map[string][]point, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, "", err
	}
	defer f.Close()
	data := map[string][]point{}
	meta := ""
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) > 0 && fields[0] == "FIGMETA":
			meta = strings.Join(fields[1:], " ")
		case len(fields) == 4 && fields[0] == "FIGDATA":
			prio, err1 := strconv.Atoi(fields[2])
			phase, err2 := strconv.ParseInt(fields[3], 10, 64)
			if err1 != nil || err2 != nil {
				return nil, "", fmt.Errorf("bad line %q", sc.Text())
			}
			data[fields[1]] = append(data[fields[1]], point{prio, phase})
		}
	}
	if len(data) == 0 {
		return nil, "", fmt.Errorf("%s: no FIGDATA lines", path)
	}
	return data, meta, sc.Err()
}

func svg(data map[string][]point, meta string) string {
	const (
		width   = 760
		left    = 110
		right   = 20
		panelH  = 150
		rowH    = 40
		top     = 60
		gap     = 50
		cycleNs = 1_000_000
	)
	plotW := width - left - right
	x := func(ns int64) float64 { return left + float64(ns)*float64(plotW)/cycleNs }
	windows := [][2]int64{{0, 400_000}, {400_000, 700_000}, {700_000, 1_000_000}}
	height := top + len(order)*(panelH+gap) + 40
	var b strings.Builder
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="22" font-size="15" font-weight="bold">Arrival time behind the TSN NIC, folded into the 1 ms taprio gate cycle</text>`+"\n", left-90)
	fmt.Fprintf(&b, `<text x="%d" y="40" fill="#555">%s</text>`+"\n", left-90, esc(meta))
	rng := rand.New(rand.NewPCG(1, 2)) // fixed jitter: the file regenerates identically from the same data
	for i, mode := range order {
		y0 := float64(top + i*(panelH+gap) + 20)
		pts := data[mode]
		fmt.Fprintf(&b, `<text x="%d" y="%.0f" font-weight="bold">%s (%d packets)</text>`+"\n", left-90, y0-6, esc(titles[mode]), len(pts))
		// Gate windows: the background of each class's window in its colour.
		for c, w := range windows {
			fmt.Fprintf(&b, `<rect x="%.1f" y="%.1f" width="%.1f" height="%d" fill="%s" fill-opacity="0.12"/>`+"\n",
				x(w[0]), y0, x(w[1])-x(w[0]), 3*rowH, colours[c])
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" fill="%s" text-anchor="middle">class %d gate open</text>`+"\n",
				(x(w[0])+x(w[1]))/2, y0+3*rowH+14, colours[c], c)
		}
		for p := 0; p < 3; p++ {
			ry := y0 + float64(p)*rowH
			fmt.Fprintf(&b, `<text x="%d" y="%.1f" text-anchor="end">priority %d</text>`+"\n", left-8, ry+rowH/2+4, p)
			fmt.Fprintf(&b, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#ddd"/>`+"\n", left, ry+rowH, width-right, ry+rowH)
		}
		for _, pt := range pts {
			if pt.prio < 0 || pt.prio > 2 {
				continue
			}
			c := 0
			switch {
			case pt.phase >= windows[2][0]:
				c = 2
			case pt.phase >= windows[1][0]:
				c = 1
			}
			cy := y0 + float64(pt.prio)*rowH + 6 + rng.Float64()*(rowH-12)
			fmt.Fprintf(&b, `<circle cx="%.1f" cy="%.1f" r="2" fill="%s" fill-opacity="0.75"/>`+"\n", x(pt.phase), cy, colours[c])
		}
		if len(pts) == 0 {
			fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle" fill="#b00">no packet arrived</text>`+"\n", x(500_000), y0+1.5*rowH)
		}
		fmt.Fprintf(&b, `<rect x="%d" y="%.1f" width="%d" height="%d" fill="none" stroke="#444"/>`+"\n", left, y0, plotW, 3*rowH)
		for us := 0; us <= 1000; us += 100 {
			fmt.Fprintf(&b, `<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#444"/>`+"\n", x(int64(us)*1000), y0+3*rowH, x(int64(us)*1000), y0+3*rowH+4)
			if i == len(order)-1 {
				fmt.Fprintf(&b, `<text x="%.1f" y="%.1f" text-anchor="middle">%d</text>`+"\n", x(int64(us)*1000), y0+3*rowH+30, us)
			}
		}
	}
	fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="middle">time in the gate cycle (µs); dot colour: the class whose window the packet left in</text>`+"\n", left+plotW/2, height-8)
	b.WriteString("</svg>\n")
	return b.String()
}

func esc(s string) string {
	return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;").Replace(s)
}
