package store

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

// List walks the directory a page of entries at a time, in the order the
// file system gives them (not sorted: a sorted listing would hold a whole
// directory, a million names of a million-path cache, where a page is a
// thousand). A file's ETag is its modification time and size: Put
// replaces a file whole, so either changes with it.
func (s *FileStore) List(ctx context.Context, prefix string, fn func(Object) error) error {
	root := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		root = prefix[:i]
	}
	err := s.walk(ctx, root, prefix, func(key string, d fs.DirEntry) error {
		if strings.HasPrefix(d.Name(), tmpPrefix) || !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := d.Info()
		if errors.Is(err, fs.ErrNotExist) {
			return nil // deleted while listing
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

// walk calls fn with each regular file of the directory of key prefix dir
// ("" for the top) and of the directories under it that may hold keys
// under prefix, a page of entries at a time.
func (s *FileStore) walk(ctx context.Context, dir, prefix string, fn func(key string, d fs.DirEntry) error) error {
	f, err := os.Open(filepath.Join(s.dir, filepath.FromSlash(dir)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	if dir != "" {
		dir += "/"
	}
	for {
		entries, rerr := f.ReadDir(PageSize)
		for _, d := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			key := dir + d.Name()
			if d.IsDir() {
				if strings.HasPrefix(key+"/", prefix) || strings.HasPrefix(prefix, key+"/") {
					if err := s.walk(ctx, key, prefix, fn); err != nil {
						return err
					}
				}
				continue
			}
			if d.Type().IsRegular() {
				if err := fn(key, d); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF || (rerr == nil && len(entries) == 0) {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
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
	return s.walk(ctx, "", "", func(key string, d fs.DirEntry) error {
		if !strings.HasPrefix(d.Name(), tmpPrefix) {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		return fn(PendingUpload{Key: key, ID: key, Initiated: info.ModTime()})
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
