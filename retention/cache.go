package retention

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"go.etcd.io/bbolt"
)

// Cache remembers small objects read from a store (.narinfos, roots,
// pins) under their key and ETag, in a bbolt file: an object is immutable
// under its ETag, so a second walk reads again only what changed. It is
// a hint: losing it costs reads, never correctness.
type Cache struct {
	db *bbolt.DB

	mu      sync.Mutex
	pending map[string][]byte
}

var cacheBucket = []byte("objects")

// CacheFile is where the cache of store (its String) lives under dir.
func CacheFile(dir, store string) string {
	sum := sha256.Sum256([]byte(store))
	return filepath.Join(dir, "walk-"+hex.EncodeToString(sum[:8])+".db")
}

// OpenCache opens (creating) the cache file. Another walk of the same
// store holding it makes this fail after a second rather than wait.
func OpenCache(file string) (*Cache, error) {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, fmt.Errorf("walk cache: %w", err)
	}
	db, err := bbolt.Open(file, 0o600, &bbolt.Options{Timeout: time.Second, NoSync: true})
	if err != nil {
		return nil, fmt.Errorf("walk cache %s: %w", file, err)
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(cacheBucket)
		return err
	}); err != nil {
		db.Close()
		return nil, fmt.Errorf("walk cache %s: %w", file, err)
	}
	return &Cache{db: db, pending: make(map[string][]byte)}, nil
}

// Close writes what is pending and closes the file.
func (c *Cache) Close() error {
	if c == nil {
		return nil
	}
	err := c.Flush()
	if cerr := c.db.Close(); err == nil {
		err = cerr
	}
	return err
}

// get returns the content remembered for key when it was read at etag.
func (c *Cache) get(key, etag string) ([]byte, bool) {
	if c == nil || etag == "" {
		return nil, false
	}
	var out []byte
	c.db.View(func(tx *bbolt.Tx) error {
		v := tx.Bucket(cacheBucket).Get([]byte(key))
		if e, data, ok := bytes.Cut(v, []byte{'\n'}); ok && string(e) == etag {
			out = append([]byte(nil), data...)
		}
		return nil
	})
	return out, out != nil
}

// flushEvery bounds what waits in memory to be written.
const flushEvery = 512

// put remembers data read at etag; writes go in batches.
func (c *Cache) put(key, etag string, data []byte) {
	if c == nil || etag == "" {
		return
	}
	v := make([]byte, 0, len(etag)+1+len(data))
	v = append(append(append(v, etag...), '\n'), data...)
	c.mu.Lock()
	c.pending[key] = v
	full := len(c.pending) >= flushEvery
	c.mu.Unlock()
	if full {
		c.Flush()
	}
}

// Flush writes the pending entries in one transaction.
func (c *Cache) Flush() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	batch := c.pending
	c.pending = make(map[string][]byte)
	c.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	// In key order, as bbolt fills pages best.
	keys := slices.Sorted(maps.Keys(batch))
	return c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(cacheBucket)
		for _, k := range keys {
			if err := b.Put([]byte(k), batch[k]); err != nil {
				return err
			}
		}
		return nil
	})
}

// prune forgets every key for which keep is false: objects gone from the
// store, so the file grows with the store, not with its history.
func (c *Cache) prune(keep func(key string) bool) error {
	if c == nil {
		return nil
	}
	if err := c.Flush(); err != nil {
		return err
	}
	return c.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(cacheBucket)
		var gone [][]byte
		b.ForEach(func(k, _ []byte) error {
			if !keep(string(k)) {
				gone = append(gone, append([]byte(nil), k...))
			}
			return nil
		})
		for _, k := range gone {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		return nil
	})
}
