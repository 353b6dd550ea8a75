package nix

import (
	"fmt"
	"os"
	"strings"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// LoadSecretKeyFile reads a Nix secret key ("name:base64") as written by
// `nix key generate-secret`, `nix-store --generate-binary-cache-key` or
// `nixpush keygen`. A key that group or others may read is refused: anyone
// who can read it can sign paths every consumer trusts.
func LoadSecretKeyFile(path string) (signature.SecretKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return signature.SecretKey{}, fmt.Errorf("secret key file: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return signature.SecretKey{}, fmt.Errorf("secret key file %s is readable by group or others (mode %04o); fix: chmod 600 %s",
			path, fi.Mode().Perm(), path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return signature.SecretKey{}, fmt.Errorf("secret key file: %w", err)
	}
	key, err := signature.LoadSecretKey(strings.TrimSpace(string(data)))
	if err != nil {
		return signature.SecretKey{}, fmt.Errorf("secret key file %s: %w (expected name:base64 as written by nix key generate-secret)", path, err)
	}
	return key, nil
}

// ParsePublicKey reads a Nix public key ("name:base64").
func ParsePublicKey(s string) (signature.PublicKey, error) {
	pk, err := signature.ParsePublicKey(strings.TrimSpace(s))
	if err != nil {
		return signature.PublicKey{}, fmt.Errorf("public key: %w", err)
	}
	return pk, nil
}
