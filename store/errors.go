package store

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"syscall"
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

// StoreProblem is what is wrong between the daemon and its store, in the
// terms an operator fixes it in.
type StoreProblem string

const (
	Unreachable       StoreProblem = "unreachable"            // no connection: endpoint, network, server down
	Certificate       StoreProblem = "certificate"            // TLS: the server's certificate is not trusted
	Credentials       StoreProblem = "credentials"            // the access key or its secret is rejected
	NoBucket          StoreProblem = "bucket missing"         // the bucket does not exist
	Denied            StoreProblem = "access denied"          // the account may not do this (policy)
	CacheInfoMismatch StoreProblem = "nix-cache-info"         // nix-cache-info is for another store directory
	NotWritable       StoreProblem = "not writable"           // a file:// directory that cannot be written
	NoCacheInfo       StoreProblem = "without nix-cache-info" // not prepared as a cache
	unclassified      StoreProblem = ""
)

// Fix says what to do about the problem.
func (p StoreProblem) Fix() string {
	switch p {
	case Unreachable:
		return "check endpoint= and scheme= in the store URI and that the server is up (the daemon keeps checking)"
	case Certificate:
		return "pass the CA that signed the server's certificate with --ca-certificate (services.nixpush.caCertificate)"
	case Credentials:
		return "check the access key and secret: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or the profile= of the credentials file (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials)"
	case NoBucket:
		return "create it: nixpush init --store-uri URI"
	case Denied:
		return "give the account the uploader policy (nixpush init --print-policy, or init --create-user)"
	case CacheInfoMismatch:
		return "use a bucket of its own for this store directory (--store-dir), or fix nix-cache-info"
	case NoCacheInfo:
		return "prepare it: nixpush init --store-uri URI"
	case NotWritable:
		return "make the cache directory writable by the daemon's user"
	}
	return ""
}

// Config reports whether the problem is one of configuration, which only
// the operator can fix: items that failed for it are queued again once the
// store check passes.
func (p StoreProblem) Config() bool { return p != Unreachable && p != unclassified }

// StoreError is an error of the store classified once, where it is
// understood (S3 error codes, network and TLS errors).
type StoreError struct {
	Problem StoreProblem
	Err     error
}

func (e *StoreError) Error() string {
	if e.Problem == Unreachable {
		return "store unreachable: " + e.Err.Error()
	}
	return "store " + string(e.Problem) + ": " + e.Err.Error()
}

func (e *StoreError) Unwrap() error { return e.Err }

// Fix says what to do about it.
func (e *StoreError) Fix() string { return e.Problem.Fix() }

// FailureClassStore is the queue class of items that failed for the store's
// configuration.
const FailureClassStore = "store"

// FailureClass puts items that failed for the store's configuration in the
// queue's "store" class, which the daemon queues again once the store
// check passes.
func (e *StoreError) FailureClass() string {
	if e.Problem.Config() {
		return FailureClassStore
	}
	return ""
}

// AsStoreError returns the StoreError in err's chain, or nil.
func AsStoreError(err error) *StoreError {
	var se *StoreError
	if errors.As(err, &se) {
		return se
	}
	return nil
}

// classifyNet recognises errors below HTTP: certificates, then connections.
func classifyNet(err error) StoreProblem {
	var unknownCA x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var verify *tls.CertificateVerificationError
	var recordHeader tls.RecordHeaderError
	switch {
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &invalid), errors.As(err, &verify):
		return Certificate
	case errors.As(err, &recordHeader):
		// An http server answered a TLS hello: scheme=https against an
		// http endpoint.
		return Unreachable
	}
	var netErr net.Error
	var opErr *net.OpError
	var dnsErr *net.DNSError
	if errors.As(err, &opErr) || errors.As(err, &dnsErr) || (errors.As(err, &netErr) && netErr.Timeout()) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) {
		return Unreachable
	}
	return unclassified
}
