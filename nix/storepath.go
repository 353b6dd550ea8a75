package nix

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/nix-community/go-nix/pkg/storepath"
)

// DefaultStoreDir is the store directory of every ordinary Nix installation.
const DefaultStoreDir = "/nix/store"

// hashLen is the length of the nixbase32 hash part of a store path basename.
const hashLen = 32

// maxNameLen is the longest name part Nix allows.
const maxNameLen = 211

// ErrNotStorePath reports a path that is not a valid store path.
var ErrNotStorePath = errors.New("not a store path")

// StorePath checks that p names a top-level store path in storeDir
// (storeDir/<hash>-<name>, nothing below it) and returns it cleaned.
// It never touches the file system: see Client.Query for validity.
func StorePath(storeDir, p string) (string, error) {
	if p == "" {
		return "", fmt.Errorf("%w: empty path", ErrNotStorePath)
	}
	if !filepath.IsAbs(p) {
		return "", fmt.Errorf("%w: %q is not absolute", ErrNotStorePath, p)
	}
	if strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") {
		return "", fmt.Errorf("%w: %q contains '..'", ErrNotStorePath, p)
	}
	clean := filepath.Clean(p)
	dir, base := filepath.Split(clean)
	if filepath.Clean(dir) != filepath.Clean(storeDir) {
		return "", fmt.Errorf("%w: %q is not directly under %s", ErrNotStorePath, p, storeDir)
	}
	if _, err := storepath.FromString(base); err != nil {
		return "", fmt.Errorf("%w: %q: %v", ErrNotStorePath, p, err)
	}
	if name := base[hashLen+1:]; name == "" || name == "." || name == ".." || len(name) > maxNameLen {
		return "", fmt.Errorf("%w: %q: bad name %q", ErrNotStorePath, p, name)
	}
	return clean, nil
}

// HashPart returns the 32-character hash part of a store path, the name of
// its .narinfo in a binary cache.
func HashPart(p string) string {
	base := filepath.Base(p)
	if len(base) < hashLen {
		return base
	}
	return base[:hashLen]
}

// StoreHashPart is the hash part of a store path or of its base name, or
// "" when p is neither (no '-' after 32 characters); HashPart takes any
// name as it comes.
func StoreHashPart(p string) string {
	b := filepath.Base(p)
	if len(b) < hashLen+1 || b[hashLen] != '-' {
		return ""
	}
	return b[:hashLen]
}
