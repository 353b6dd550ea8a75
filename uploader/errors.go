package uploader

import "fmt"

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
