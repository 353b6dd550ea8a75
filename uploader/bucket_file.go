package uploader

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// tmpPrefix starts the name of a Put's temporary file.
const tmpPrefix = ".tmp-"

// List walks the directory in key order. A file's ETag is its modification
// time and size: Put replaces a file whole, so either changes with it.
func (s *FileStore) List(ctx context.Context, prefix string, fn func(Object) error) error {
	root := s.dir
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		root = filepath.Join(s.dir, filepath.FromSlash(prefix[:i]))
	}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if d.IsDir() || !d.Type().IsRegular() || strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		rel, err := filepath.Rel(s.dir, p)
		if err != nil {
			return err
		}
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted while walking
		}
		if err != nil {
			return err
		}
		return fn(fileObject(key, info))
	})
	if err != nil {
		return fmt.Errorf("file store: list %s: %w", prefix, err)
	}
	return nil
}

func fileObject(key string, info fs.FileInfo) Object {
	return Object{Key: key, Size: info.Size(), LastModified: info.ModTime(),
		ETag: fmt.Sprintf("%x-%x", info.ModTime().UnixNano(), info.Size())}
}

func (s *FileStore) Stat(ctx context.Context, key string) (Object, error) {
	p, err := s.path(key)
	if err != nil {
		return Object{}, err
	}
	info, err := os.Stat(p)
	if err != nil {
		return Object{}, missing(key, err)
	}
	return fileObject(key, info), nil
}

func (s *FileStore) Open(ctx context.Context, key string) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, missing(key, err)
	}
	return f, nil
}

// DeleteMany removes the files one by one.
func (s *FileStore) DeleteMany(ctx context.Context, keys []string) error {
	for _, k := range keys {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.Delete(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// ListUploads lists the temporary files of Puts: a crashed Put leaves one.
func (s *FileStore) ListUploads(ctx context.Context, fn func(PendingUpload) error) error {
	return filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		rel, _ := filepath.Rel(s.dir, p)
		return fn(PendingUpload{Key: filepath.ToSlash(rel), ID: filepath.ToSlash(rel), Initiated: info.ModTime()})
	})
}

func (s *FileStore) AbortUpload(ctx context.Context, up PendingUpload) error {
	p := filepath.Join(s.dir, filepath.FromSlash(up.ID))
	if !strings.HasPrefix(filepath.Base(p), tmpPrefix) {
		return fmt.Errorf("file store: %s is not an upload", up.ID)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// GetTagged reads a small object with a tag of its content (a SHA-256):
// a file's modification time, the ETag of List, may not change between
// two writes within a clock tick, its content does.
func (s *FileStore) GetTagged(ctx context.Context, key string) ([]byte, string, error) {
	b, err := s.Get(ctx, key)
	if err != nil {
		return nil, "", err
	}
	return b, contentTag(b), nil
}

func contentTag(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// PutIf compares and writes under an exclusive lock on the store's lock
// file, which every PutIf of every process on this file system takes.
func (s *FileStore) PutIf(ctx context.Context, key string, data []byte, contentType, etag string) (string, error) {
	lock, err := os.OpenFile(filepath.Join(s.dir, ".nixpush-lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", fmt.Errorf("file store: lock for %s: %w", key, err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("file store: lock for %s: %w", key, err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	cur, err := s.Get(ctx, key)
	switch {
	case errors.Is(err, ErrNotExist):
		if etag != "" {
			return "", fmt.Errorf("file store: %s is gone: %w", key, ErrConditionFailed)
		}
	case err != nil:
		return "", err
	case etag == "" || contentTag(cur) != etag:
		return "", fmt.Errorf("file store: %s: %w", key, ErrConditionFailed)
	}
	if err := s.Put(ctx, key, bytes.NewReader(data), int64(len(data)), contentType); err != nil {
		return "", err
	}
	return contentTag(data), nil
}
