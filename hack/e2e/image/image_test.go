package image

import (
	"archive/tar"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func TestBuildAndWriteArchive(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "prog")
	if err := os.WriteFile(bin, []byte("#!binary"), 0o644); err != nil {
		t.Fatal(err)
	}
	img, err := Build(Spec{Files: []File{{Src: bin, Dst: "/usr/local/bin/prog"}}, Entrypoint: []string{"/usr/local/bin/prog"}})
	if err != nil {
		t.Fatal(err)
	}
	again, err := Build(Spec{Files: []File{{Src: bin, Dst: "/usr/local/bin/prog"}}, Entrypoint: []string{"/usr/local/bin/prog"}})
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := img.Digest()
	d2, _ := again.Digest()
	if d1 != d2 {
		t.Errorf("same inputs, different digests %v and %v", d1, d2)
	}
	archive := filepath.Join(dir, "img.tar")
	if err := WriteArchive(archive, map[string]v1.Image{"tsn-e2e.local/prog:e2e": img}); err != nil {
		t.Fatal(err)
	}
	tag, _ := name.NewTag("tsn-e2e.local/prog:e2e")
	back, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := back.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" || len(cfg.Config.Entrypoint) != 1 || cfg.Config.Entrypoint[0] != "/usr/local/bin/prog" {
		t.Errorf("config %+v", cfg)
	}
	layers, err := back.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers %v %v", layers, err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	got := map[string]int64{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got[h.Name] = h.Mode
	}
	want := map[string]int64{"tmp/": 0o1777, "usr/": 0o755, "usr/local/": 0o755, "usr/local/bin/": 0o755, "usr/local/bin/prog": 0o755}
	if len(got) != len(want) {
		t.Errorf("layer entries %v, want %v", got, want)
	}
	for n, m := range want {
		if got[n] != m {
			t.Errorf("%s: mode %o, want %o (entries %v)", n, got[n], m, got)
		}
	}
}

func TestErrors(t *testing.T) {
	if _, err := Build(Spec{Files: []File{{Src: "/nonexistent", Dst: "/x"}}}); err == nil {
		t.Error("missing source accepted")
	}
	if _, err := Build(Spec{Files: []File{{Src: "/dev/null", Dst: "relative"}}}); err == nil {
		t.Error("relative destination accepted")
	}
	img, _ := Build(Spec{})
	if err := WriteArchive(filepath.Join(t.TempDir(), "x.tar"), map[string]v1.Image{"no tag": img}); err == nil {
		t.Error("bad reference accepted")
	}
}
