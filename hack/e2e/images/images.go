// Package images builds the container images of the end-to-end tests from
// this repository's static Go binaries: the sandbox (pause) image and the
// example talker/receiver image.
package images

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/cluster"
	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/image"
)

// Examples holds /bin/talker and /bin/receiver; pods give the command.
const Examples = "tsn-e2e.local/examples:e2e"

// GoBuild builds the main package pkg (a path relative to dir, e.g.
// ./examples/talker) as a static binary at out.
func GoBuild(ctx context.Context, dir, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, strings.TrimSpace(string(b)))
	}
	return nil
}

// Driver is the reference the driver image gets besides those passed to Build.
const Driver = "tsn-e2e.local/tsn-dra-driver:e2e"

// Build writes the pause and examples images into one archive for
// cluster.ImportImages. repo is the repository root. With driverRefs, it also
// builds ./cmd/tsn-dra-driver into an image tagged Driver and every one of
// driverRefs (the references the manifests in deployments/ use, so they run
// the local build unchanged).
func Build(ctx context.Context, repo, archive string, driverRefs ...string) error {
	tmp, err := os.MkdirTemp("", "tsn-e2e-images-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bins := map[string][2]string{ // name -> module dir, package
		"pause":    {filepath.Join(repo, "hack", "e2e"), "./cmd/pause"},
		"talker":   {repo, "./examples/talker"},
		"receiver": {repo, "./examples/receiver"},
	}
	for name, b := range bins {
		if err := GoBuild(ctx, b[0], b[1], filepath.Join(tmp, name)); err != nil {
			return err
		}
	}
	pause, err := image.Build(image.Spec{
		Files:      []image.File{{Src: filepath.Join(tmp, "pause"), Dst: "/pause"}},
		Entrypoint: []string{"/pause"},
	})
	if err != nil {
		return err
	}
	examples, err := image.Build(image.Spec{Files: []image.File{
		{Src: filepath.Join(tmp, "talker"), Dst: "/bin/talker"},
		{Src: filepath.Join(tmp, "receiver"), Dst: "/bin/receiver"},
	}})
	if err != nil {
		return err
	}
	all := map[string]v1.Image{cluster.PauseImage: pause, Examples: examples}
	if len(driverRefs) > 0 {
		bin := filepath.Join(tmp, "tsn-dra-driver")
		if err := GoBuild(ctx, repo, "./cmd/tsn-dra-driver", bin); err != nil {
			return err
		}
		drv, err := image.Build(image.Spec{
			Files:      []image.File{{Src: bin, Dst: "/tsn-dra-driver"}},
			Entrypoint: []string{"/tsn-dra-driver"},
		})
		if err != nil {
			return err
		}
		all[Driver] = drv
		for _, ref := range driverRefs {
			all[ref] = drv
		}
	}
	return image.WriteArchive(archive, all)
}

// ManifestImages returns the image references of the manifests in dir (every
// "image:" value of its YAML files), so the driver image can be imported under
// the names the manifests use.
func ManifestImages(dir string) ([]string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var refs []string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "- "))
			v, ok := strings.CutPrefix(line, "image:")
			if !ok {
				continue
			}
			v = strings.Trim(strings.TrimSpace(v), `"'`)
			if v != "" && !seen[v] {
				seen[v] = true
				refs = append(refs, v)
			}
		}
	}
	if len(refs) == 0 {
		return nil, fmt.Errorf("no image references in %s/*.yaml", dir)
	}
	return refs, nil
}
