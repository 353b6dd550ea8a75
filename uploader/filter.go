package uploader

import (
	"fmt"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/nixpush/nixpush/nix"
)

// Filter leaves paths out of every push: paths an upstream cache serves,
// or that are not worth hosting. A filtered path is neither uploaded nor
// counted as missing; the .narinfos of paths referring to it still list
// it, so consumers fetch it from the upstream cache. This relaxes the
// closure invariant for filtered references only: every other reference
// of a .narinfo is in the cache before it.
type Filter struct {
	// Exclude matches store path names (the part after "<hash>-").
	Exclude []*regexp.Regexp
	// SkipSignedBy are key names: a path the local Nix database holds a
	// signature of by one of them is left out (e.g. cache.nixos.org-1).
	SkipSignedBy []string
}

// ParseExclude compiles --exclude patterns.
func ParseExclude(patterns []string) ([]*regexp.Regexp, error) {
	var out []*regexp.Regexp
	for _, p := range patterns {
		re, err := regexp.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("--exclude %q: %v (a Go regular expression matched against the store path name, e.g. '-doc$')", p, err)
		}
		out = append(out, re)
	}
	return out, nil
}

// Empty reports whether the filter leaves nothing out.
func (f Filter) Empty() bool { return len(f.Exclude) == 0 && len(f.SkipSignedBy) == 0 }

// Skips reports whether info is to be left out, and why.
func (f Filter) Skips(info nix.PathInfo) (bool, string) {
	base := filepath.Base(info.Path)
	name := base
	if len(base) > 33 {
		name = base[33:]
	}
	for _, re := range f.Exclude {
		if re.MatchString(name) {
			return true, "excluded by " + re.String()
		}
	}
	for _, sig := range info.Sigs {
		key, _, _ := strings.Cut(sig, ":")
		for _, k := range f.SkipSignedBy {
			if key == k {
				return true, "signed by " + k
			}
		}
	}
	return false, ""
}
