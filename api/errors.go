package api

import "errors"

// APIError is an error answer from the daemon.
type APIError struct {
	StatusCode int
	Message    string
}

func (e *APIError) Error() string { return e.Message }

// Final reports whether the answer is a decision about the request itself
// (see the status codes in api.go): a 4xx other than 408 and 429. Every
// other answer (5xx: the daemon could not commit; 408, 429: try later)
// leaves the paths with the caller, which must keep them (the hook spools).
func (e *APIError) Final() bool {
	return e.StatusCode/100 == 4 && e.StatusCode != 408 && e.StatusCode != 429
}

// IsAPIError reports whether err is an answer from the daemon (as opposed
// to the daemon being unreachable).
func IsAPIError(err error) bool {
	var a *APIError
	return errors.As(err, &a)
}

// IsFinal reports whether err is the daemon refusing the request for good:
// the paths are invalid or the caller is not allowed. Unreachable, timed
// out and 5xx are not final.
func IsFinal(err error) bool {
	var a *APIError
	return errors.As(err, &a) && a.Final()
}
