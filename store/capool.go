package store

import (
	"crypto/x509"
	"fmt"
	"os"
)

// CAPool returns the system's trusted roots with the PEM certificates of
// file added: a private CA that signed an S3 endpoint's certificate.
func CAPool(file string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA certificate %s: no PEM certificate found", file)
	}
	return pool, nil
}
