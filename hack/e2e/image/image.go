// Package image builds container images from static binaries without a
// container engine: one layer holding the files, a config with the entrypoint,
// written as a docker-archive tarball that `ctr images import` accepts.
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// File is one file of the image.
type File struct {
	// Src is the path on this machine.
	Src string
	// Dst is the absolute path in the image.
	Dst string
	// Mode defaults to 0o755 (these are binaries).
	Mode int64
}

// Spec describes an image.
type Spec struct {
	Files      []File
	Entrypoint []string
	Cmd        []string
	Env        []string
}

// epoch keeps images reproducible: same binaries, same digest.
var epoch = time.Unix(0, 0).UTC()

// Build assembles the image for linux/amd64 (the machine's own platform).
func Build(spec Spec) (v1.Image, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	files := append([]File(nil), spec.Files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Dst < files[j].Dst })
	// Every image gets a /tmp: programs that write scratch files expect one.
	if err := addDir(tw, dirs, "tmp", 0o1777); err != nil {
		return nil, err
	}
	for _, f := range files {
		if !path.IsAbs(f.Dst) {
			return nil, fmt.Errorf("image file %q: destination must be absolute", f.Dst)
		}
		data, err := os.ReadFile(f.Src)
		if err != nil {
			return nil, fmt.Errorf("reading image file: %w", err)
		}
		dst := strings.TrimPrefix(path.Clean(f.Dst), "/")
		if err := addParents(tw, dirs, dst); err != nil {
			return nil, err
		}
		mode := f.Mode
		if mode == 0 {
			mode = 0o755
		}
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: dst, Mode: mode, Size: int64(len(data)), ModTime: epoch, Format: tar.FormatPAX}); err != nil {
			return nil, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	})
	if err != nil {
		return nil, fmt.Errorf("making the layer: %w", err)
	}
	img, err := mutate.Append(empty.Image, mutate.Addendum{Layer: layer, History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "tsn-dra-driver hack/e2e/image"}})
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", "amd64"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = spec.Entrypoint
	cfg.Config.Cmd = spec.Cmd
	cfg.Config.Env = append([]string{"PATH=/bin:/usr/bin:/sbin:/usr/sbin"}, spec.Env...)
	return mutate.ConfigFile(img, cfg)
}

func addParents(tw *tar.Writer, dirs map[string]bool, file string) error {
	var parents []string
	for d := path.Dir(file); d != "." && d != "/"; d = path.Dir(d) {
		parents = append([]string{d}, parents...)
	}
	for _, d := range parents {
		if err := addDir(tw, dirs, d, 0o755); err != nil {
			return err
		}
	}
	return nil
}

func addDir(tw *tar.Writer, dirs map[string]bool, dir string, mode int64) error {
	if dirs[dir] {
		return nil
	}
	dirs[dir] = true
	return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: mode, ModTime: epoch, Format: tar.FormatPAX})
}

// WriteArchive writes images, keyed by their reference (e.g.
// "tsn-e2e.local/pause:e2e"), into one docker-archive tarball at path.
func WriteArchive(path string, images map[string]v1.Image) error {
	refs := map[name.Reference]v1.Image{}
	for ref, img := range images {
		tag, err := name.NewTag(ref)
		if err != nil {
			return fmt.Errorf("image reference %q: %w", ref, err)
		}
		refs[tag] = img
	}
	tmp := path + ".tmp"
	if err := tarball.MultiRefWriteToFile(tmp, refs); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing image archive %s: %w", path, err)
	}
	return os.Rename(tmp, path)
}
