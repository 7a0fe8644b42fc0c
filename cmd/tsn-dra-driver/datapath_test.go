package main

import (
	"flag"
	"strings"
	"testing"
)

func TestDataPathFlagsValidate(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // "" for valid
	}{
		{nil, ""},
		{[]string{"--nri-attach-wait=0", "--nri-container-wait=1.9s"}, ""},
		{[]string{"--saver-attach=xdp"}, `--saver-attach="xdp": want tc or tcx`},
		{[]string{"--nri-attach-wait=-1ms"}, "--nri-attach-wait=-1ms: want 0 or more"},
		{[]string{"--nri-container-wait=0"}, "--nri-container-wait=0s: want more than 0"},
	} {
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		var f dataPathFlags
		f.register(fs)
		if err := fs.Parse(tc.args); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		err := f.validate()
		if tc.want == "" && err != nil {
			t.Errorf("%v: %v, want valid", tc.args, err)
		}
		if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
