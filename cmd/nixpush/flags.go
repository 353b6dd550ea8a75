package main

import (
	"fmt"
	"strings"

	"github.com/nixpush/nixpush/uploader"
)

// stringsFlag is a flag that may be given several times.
type stringsFlag []string

func (s *stringsFlag) String() string { return strings.Join(*s, ",") }

func (s *stringsFlag) Set(v string) error {
	*s = append(*s, v)
	return nil
}

// parseFilter reads --exclude and --skip-signed-by, as the daemon and
// verify take them.
func parseFilter(excludes, skipSignedBy []string) (uploader.Filter, error) {
	exclude, err := uploader.ParseExclude(excludes)
	if err != nil {
		return uploader.Filter{}, err
	}
	for _, k := range skipSignedBy {
		if k == "" || strings.ContainsAny(k, ": ") {
			return uploader.Filter{}, fmt.Errorf("--skip-signed-by %q: want a key name such as cache.nixos.org-1 (the part before the colon)", k)
		}
	}
	return uploader.Filter{Exclude: exclude, SkipSignedBy: skipSignedBy}, nil
}
