package uploader

import (
	"errors"
	"fmt"
)

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (p permanentError) Error() string { return p.err.Error() }
func (p permanentError) Unwrap() error { return p.err }

// Permanent marks err as one that retrying cannot fix (a path no longer
// valid, a NAR hash mismatch, access denied).
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err}
}

// IsPermanent reports whether err, or an error it wraps, is permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

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
