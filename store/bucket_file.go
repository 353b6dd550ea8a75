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
	"slices"
	"strings"
	"syscall"
)

// tmpPrefix starts the name of a Put's temporary file.
const tmpPrefix = ".tmp-"

// lockName is the lock file of PutIf, in the store's directory: not an
// object.
const lockName = ".nixpush-lock"

// List walks the directory in S3's key order (byte-wise ascending, a
// directory's keys where its name and "/" sort), holding the names of one
// directory per level at a time: those of the top level of a
// million-path cache are some 60 MB, the price of S3's order. A file's
// ETag is its modification time and size: Put replaces a file whole, so
// either changes with it.
func (s *FileStore) List(ctx context.Context, prefix string, fn func(Object) error) error {
	return s.listWith(ctx, s.walk, prefix, fn)
}

// walker walks the directory of key prefix dir and those under it that
// may hold keys under prefix, calling fn with each regular file's key, its
// name and a way to stat it.
type walker func(ctx context.Context, dir, prefix string, fn func(key, name string, stat func() (fs.FileInfo, error)) error) error

// listWith lists the objects under prefix as walk finds them.
func (s *FileStore) listWith(ctx context.Context, walk walker, prefix string, fn func(Object) error) error {
	root := ""
	if i := strings.LastIndexByte(prefix, '/'); i >= 0 {
		root = prefix[:i]
	}
	err := walk(ctx, root, prefix, func(key, name string, stat func() (fs.FileInfo, error)) error {
		if strings.HasPrefix(name, tmpPrefix) || key == lockName || !strings.HasPrefix(key, prefix) {
			return nil
		}
		info, err := stat()
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

// walk calls fn with the key and name of each regular file of the
// directory of key prefix dir ("" for the top) and of the directories
// under it that may hold keys under prefix, in key order. It reads a
// directory PageSize entries at a time, keeping their names (a
// directory's with a "/" after it, where its keys sort).
func (s *FileStore) walk(ctx context.Context, dir, prefix string, fn func(key, name string, stat func() (fs.FileInfo, error)) error) error {
	names, err := s.readNames(dir)
	if err != nil {
		return err
	}
	if dir != "" {
		dir += "/"
	}
	for _, n := range names {
		if err := ctx.Err(); err != nil {
			return err
		}
		key := dir + n
		if sub, ok := strings.CutSuffix(key, "/"); ok {
			if strings.HasPrefix(key, prefix) || strings.HasPrefix(prefix, key) {
				if err := s.walk(ctx, sub, prefix, fn); err != nil {
					return err
				}
			}
			continue
		}
		stat := func() (fs.FileInfo, error) { return os.Lstat(filepath.Join(s.dir, filepath.FromSlash(key))) }
		if err := fn(key, n, stat); err != nil {
			return err
		}
	}
	return nil
}

// readNames lists the regular files and the directories ("name/") of
// dir, sorted byte-wise; none when dir does not exist.
func (s *FileStore) readNames(dir string) ([]string, error) {
	f, err := os.Open(filepath.Join(s.dir, filepath.FromSlash(dir)))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var names []string
	for {
		entries, rerr := f.ReadDir(PageSize)
		for _, d := range entries {
			switch {
			case d.IsDir():
				names = append(names, d.Name()+"/")
			case d.Type().IsRegular():
				names = append(names, d.Name())
			}
		}
		if rerr == io.EOF || (rerr == nil && len(entries) == 0) {
			break
		}
		if rerr != nil {
			return nil, rerr
		}
	}
	slices.Sort(names)
	return names, nil
}

// ListUnordered lists as List does, in the order the file system gives
// the entries, holding a page of PageSize of them at a time rather than a
// whole directory's names.
func (s *FileStore) ListUnordered(ctx context.Context, prefix string, fn func(Object) error) error {
	return s.listWith(ctx, s.walkPages, prefix, fn)
}

// walkPages calls fn with each regular file of the directory of key
// prefix dir ("" for the top) and of the directories under it that may
// hold keys under prefix, a page of entries at a time.
func (s *FileStore) walkPages(ctx context.Context, dir, prefix string, fn func(key, name string, stat func() (fs.FileInfo, error)) error) error {
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
			switch {
			case d.IsDir():
				if strings.HasPrefix(key+"/", prefix) || strings.HasPrefix(prefix, key+"/") {
					if err := s.walkPages(ctx, key, prefix, fn); err != nil {
						return err
					}
				}
			case d.Type().IsRegular():
				if err := fn(key, d.Name(), d.Info); err != nil {
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
	// In no order: a sorted walk would hold every name of the top
	// directory (18 MB more at 100,000 paths), at gc's peak.
	return s.walkPages(ctx, "", "", func(key, name string, stat func() (fs.FileInfo, error)) error {
		if !strings.HasPrefix(name, tmpPrefix) {
			return nil
		}
		info, err := stat()
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
	lock, err := os.OpenFile(filepath.Join(s.dir, lockName), os.O_CREATE|os.O_RDWR, 0o644)
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
