package uploader

import (
	"errors"
	"fmt"
)

// ErrHashMismatch reports a path whose NAR no longer matches the hash the
// Nix database registered for it (the store was modified behind Nix's back).
var ErrHashMismatch = errors.New("NAR hash mismatch")

// DependencyError reports a path left out because a path it references
// could not be uploaded; Err is the first such failure.
type DependencyError struct {
	Path string // the path that was left out
	Err  error
}

func (e *DependencyError) Error() string {
	return fmt.Sprintf("%s: not uploaded because a dependency failed: %v", e.Path, e.Err)
}

func (e *DependencyError) Unwrap() error { return e.Err }
