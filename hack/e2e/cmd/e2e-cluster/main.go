// Command e2e-cluster starts the end-to-end single-node cluster (see package
// cluster), imports the pause and example images, prints how to reach it, and
// tears everything down on SIGINT/SIGTERM.
//
//	go run ./cmd/e2e-cluster -repo ../..
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/cluster"
	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/images"
	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/manifests"
)

var withDriver, install, externalSchedule *bool

func main() {
	bin := flag.String("bin", envOr("E2E_BIN", "/var/cache/tsn-dra-driver/e2e-v1/bin"), "binaries built by hack/e2e/build.sh")
	repo := flag.String("repo", ".", "root of the tsn-dra-driver repository (for the example images)")
	keep := flag.Bool("keep", false, "keep the state directory (logs, configs) after shutdown")
	withDriver = flag.Bool("driver", true, "also build the driver image under the references deployments/ uses (then: kubectl apply -f deployments/)")
	install = flag.Bool("install", false, "with -driver: kubectl apply -f deployments/ once the cluster is up")
	externalSchedule = flag.Bool("external-schedule", false, "with -install: apply deployments/ with scheduleOwner: external in the node config "+
		"(claims can then be prepared on a kernel without taprio; see docs/e2e.md)")
	flag.Parse()
	if os.Geteuid() != 0 {
		log.Fatal("e2e-cluster must run as root (namespaces, cgroups, mounts)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	start := time.Now()
	c, err := cluster.Start(ctx, cluster.Config{BinDir: *bin, KeepDir: *keep})
	if err != nil {
		log.Fatal(err)
	}
	code := 0
	if err := run(ctx, c, *bin, *repo, start); err != nil {
		log.Print(err)
		code = 1
	}
	if err := c.Stop(); err != nil {
		log.Printf("teardown: %v", err)
		code = 1
	}
	os.Exit(code)
}

func run(ctx context.Context, c *cluster.Cluster, bin, repo string, start time.Time) error {
	archive := filepath.Join(c.Dir, "images.tar")
	var driverRefs []string
	if *withDriver {
		refs, err := images.ManifestImages(filepath.Join(repo, "deployments"))
		if err != nil {
			return err
		}
		driverRefs = refs
	}
	if err := images.Build(ctx, repo, archive, driverRefs...); err != nil {
		return err
	}
	if err := c.ImportImages(ctx, archive); err != nil {
		return err
	}
	if *withDriver && *install {
		dir := filepath.Join(repo, "deployments")
		if *externalSchedule {
			dir = filepath.Join(c.Dir, "deployments")
			if err := manifests.WithExternalSchedule(repo, dir); err != nil {
				return err
			}
		}
		out, err := c.Kubectl(ctx, "apply", "-f", dir)
		if err != nil {
			return err
		}
		fmt.Print(string(out))
	}
	fmt.Printf(`cluster up in %v; state in %s
  export KUBECONFIG=%s
  %s/kubectl get nodes
images: %s, %s
the node's namespaces (its links, bpffs, /var/lib/kubelet):
  nsenter --target %d --net --mount -- ip -d link show %s
%s (%s) peers with %s (%s) in a wire netns; run a receiver there with
  nsenter --net=/proc/%d/ns/net -- <receiver> -listen :7788
Ctrl-C to tear down.
`, time.Since(start).Round(time.Millisecond), c.Dir, c.Kubeconfig, bin, cluster.PauseImage, images.Examples,
		c.NodePID(), cluster.TSNInterface, cluster.TSNInterface, cluster.TSNAddr, cluster.WireInterface, cluster.WireAddr, c.WirePID())
	<-ctx.Done()
	return nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
