package uploader

import (
	"testing"

	"github.com/nixpush/nixpush/nix"
)

func TestFilterSkips(t *testing.T) {
	exclude, err := ParseExclude([]string{"-doc$", "^source$"})
	if err != nil {
		t.Fatal(err)
	}
	f := Filter{Exclude: exclude, SkipSignedBy: []string{"cache.nixos.org-1"}}
	const h = "/nix/store/0c7c1xvf7lkx3wlmk4q8m33f3wkhbdvs-"
	for _, tc := range []struct {
		name string
		info nix.PathInfo
		want bool
	}{
		{"plain", nix.PathInfo{Path: h + "hello-2.12"}, false},
		{"excluded name", nix.PathInfo{Path: h + "hello-2.12-doc"}, true},
		{"anchored at the name, not the hash", nix.PathInfo{Path: h + "source"}, true},
		{"not at the end", nix.PathInfo{Path: h + "doc-hello"}, false},
		{"upstream signature", nix.PathInfo{Path: h + "glibc", Sigs: []string{"mine-1:AAAA", "cache.nixos.org-1:BBBB"}}, true},
		{"a key of another name", nix.PathInfo{Path: h + "glibc", Sigs: []string{"cache.nixos.org-2:BBBB"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, why := f.Skips(tc.info); got != tc.want {
				t.Errorf("Skips(%s) = %v (%s), want %v", tc.info.Path, got, why, tc.want)
			}
		})
	}
	if _, err := ParseExclude([]string{"("}); err == nil {
		t.Error("ParseExclude accepted a bad regular expression")
	}
	if !(Filter{}).Empty() || f.Empty() {
		t.Error("Empty is wrong")
	}
}
