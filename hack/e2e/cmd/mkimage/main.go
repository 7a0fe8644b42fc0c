// Command mkimage builds a container image from static binaries and writes it
// as a docker-archive tarball for `ctr -n k8s.io images import`.
//
//	mkimage -o talker.tar -tag tsn-e2e.local/examples:e2e \
//	    -file bin/talker:/bin/talker -file bin/receiver:/bin/receiver
package main

import (
	"flag"
	"fmt"
	"os"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/tsn-dra-driver/tsn-dra-driver/hack/e2e/image"
)

type fileFlags []image.File

func (f *fileFlags) String() string { return fmt.Sprint(*f) }
func (f *fileFlags) Set(v string) error {
	src, dst, ok := strings.Cut(v, ":")
	if !ok || src == "" || !strings.HasPrefix(dst, "/") {
		return fmt.Errorf("%q: want SRC:/DST", v)
	}
	*f = append(*f, image.File{Src: src, Dst: dst})
	return nil
}

func main() {
	var files fileFlags
	out := flag.String("o", "", "output tarball (required)")
	tag := flag.String("tag", "", "image reference, e.g. tsn-e2e.local/examples:e2e (required)")
	entrypoint := flag.String("entrypoint", "", "entrypoint (a path in the image); empty for none")
	flag.Var(&files, "file", "SRC:/DST, repeatable: a file to put into the image")
	flag.Parse()
	if *out == "" || *tag == "" || len(files) == 0 {
		fmt.Fprintln(os.Stderr, "mkimage: -o, -tag and at least one -file are required")
		os.Exit(2)
	}
	spec := image.Spec{Files: files}
	if *entrypoint != "" {
		spec.Entrypoint = []string{*entrypoint}
	}
	img, err := image.Build(spec)
	if err == nil {
		err = image.WriteArchive(*out, map[string]v1.Image{*tag: img})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}
