package hook

import "errors"

// APIError is an error answer from the daemon.
type APIError struct {
	StatusCode int
	Message    string
}

func (e *APIError) Error() string { return e.Message }

// IsAPIError reports whether err is the daemon refusing a request (as
// opposed to the daemon being unreachable).
func IsAPIError(err error) bool {
	var a *APIError
	return errors.As(err, &a)
}
