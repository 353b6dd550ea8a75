package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// FileStore is a binary cache in a local directory (Nix's file:// store).
type FileStore struct {
	dir string
}

// NewFileStore opens (creating when missing) a binary cache directory.
func NewFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("file store: %w", err)
	}
	return &FileStore{dir: dir}, nil
}

func (s *FileStore) String() string { return "file://" + s.dir }

func (s *FileStore) path(key string) (string, error) {
	if key == "" || strings.HasPrefix(key, "/") || strings.Contains(key, "..") {
		return "", fmt.Errorf("file store: bad object key %q", key)
	}
	return filepath.Join(s.dir, filepath.FromSlash(key)), nil
}

func (s *FileStore) Has(ctx context.Context, key string) (bool, error) {
	p, err := s.path(key)
	if err != nil {
		return false, err
	}
	_, err = os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	return err == nil, err
}

// ListTop lists the store directory's files (not the temporary files
// of Puts, nor PutIf's lock).
func (s *FileStore) ListTop(ctx context.Context, fn func(name string) bool) error {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if n := e.Name(); e.Type().IsRegular() && !strings.HasPrefix(n, tmpPrefix) && n != lockName && !fn(n) {
			return nil
		}
	}
	return nil
}

// Put writes to a temporary file, syncs it and renames it into place, so a
// crash leaves either the whole object or none.
func (s *FileStore) Put(ctx context.Context, key string, r io.Reader, size int64, contentType string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return fmt.Errorf("file store: %w", err)
	}
	f, err := os.CreateTemp(filepath.Dir(p), tmpPrefix+filepath.Base(p)+"-*")
	if err != nil {
		return fmt.Errorf("file store: %w", err)
	}
	tmp := f.Name()
	err = func() error {
		if _, err := io.Copy(f, contextReader{ctx, r}); err != nil {
			return err
		}
		if err := f.Chmod(0o644); err != nil {
			return err
		}
		return f.Sync()
	}()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("file store: put %s: %w", key, err)
	}
	return nil
}

func (s *FileStore) Get(ctx context.Context, key string) ([]byte, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, missing(key, err)
	}
	return b, nil
}

// missing turns a file's absence into the Store's ErrNotExist, naming
// the key; other errors pass as they are.
func missing(key string, err error) error {
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("file store: %s: %w", key, ErrNotExist)
	}
	return err
}

// contextReader stops a copy once ctx is done.
type contextReader struct {
	ctx context.Context
	r   io.Reader
}

func (c contextReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// Delete removes an object; a missing one is no error.
func (s *FileStore) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("file store: delete %s: %w", key, err)
	}
	return nil
}

// Check finds the cache directory.
func (s *FileStore) Check(ctx context.Context) error {
	fi, err := os.Stat(s.dir)
	if err == nil && !fi.IsDir() {
		err = fmt.Errorf("%s is not a directory", s.dir)
	}
	if err != nil {
		return Permanent(&StoreError{Problem: NotWritable, Err: fmt.Errorf("file store: %w", err)})
	}
	return nil
}

// Dir is the cache directory.
func (s *FileStore) Dir() string { return s.dir }
