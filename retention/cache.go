package retention

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Cache remembers small objects read from a store (.narinfos, roots,
// pins, realisations) under their key and ETag, in a file of its own: an
// object is immutable under its ETag, so a second walk reads again only
// what changed. It is a hint: losing it costs reads, never correctness.
//
// It stays small and out of memory at a million paths. Of a .narinfo it
// keeps only the lines a walk uses (StorePath, URL, Compression, FileSize,
// NarHash, NarSize, References, Deriver, Sig, CA), not the whole text; an
// unreadable one is kept whole. The file is a sequence of records, read
// with pread where a walk needs one (never mapped into memory): the walk
// holds only an index of 16 bytes per record, sorted by a hash of the key.
// Each walk writes a new file of the records it used or read, in the
// order it met them, and renames it over the old one when it ends: the
// file holds what the store held at the last walk, no history.
type Cache struct {
	file string
	lock *os.File

	mu    sync.Mutex
	old   *os.File     // the last walk's records, read from
	index []cacheEntry // of old, by key hash
	next  *os.File     // this walk's, written to
	w     *bufio.Writer
	err   error // of writing next: the walk goes on, the file is dropped
}

// cacheEntry locates a record of the old file: the hash of its key, and
// its offset (40 bits: a file of up to 1 TiB) and length (24 bits: records
// are below 16 MiB) in one word.
type cacheEntry struct {
	key uint64
	at  uint64
}

func (e cacheEntry) off() int64 { return int64(e.at >> 24) }
func (e cacheEntry) n() int     { return int(e.at & (1<<24 - 1)) }

// cacheMagic starts a cache file; a file without it (an older nixpush's
// bbolt file, a torn one) is started anew.
const cacheMagic = "nixpush walk cache 2\n"

var cacheSeed = maphash.MakeSeed()

func cacheKey(key string) uint64 { return maphash.String(cacheSeed, key) }

// CacheFile is where the cache of store (its String) lives under dir.
func CacheFile(dir, store string) string {
	sum := sha256.Sum256([]byte(store))
	return filepath.Join(dir, "walk-"+hex.EncodeToString(sum[:8])+".cache")
}

// OpenCache opens (creating) the cache file. Another walk of the same
// store holding it makes this fail after a second rather than wait.
func OpenCache(file string) (*Cache, error) {
	if err := os.MkdirAll(filepath.Dir(file), 0o700); err != nil {
		return nil, fmt.Errorf("walk cache: %w", err)
	}
	lock, err := os.OpenFile(file+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("walk cache: %w", err)
	}
	for start := time.Now(); ; {
		err = syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Since(start) > time.Second {
			lock.Close()
			return nil, fmt.Errorf("walk cache %s: in use by another walk: %w", file, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The bbolt file of nixpush before this format, memory-mapped and
	// some 2 KiB a path: gone, as its records are read anew.
	if strings.HasSuffix(file, ".cache") {
		os.Remove(strings.TrimSuffix(file, ".cache") + ".db")
	}
	return &Cache{file: file, lock: lock}, nil
}

// Close drops an unfinished walk's file and releases the cache.
func (c *Cache) Close() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropNext()
	if c.old != nil {
		c.old.Close()
		c.old, c.index = nil, nil
	}
	return c.lock.Close()
}

func (c *Cache) dropNext() {
	if c.next != nil {
		c.next.Close()
		os.Remove(c.next.Name())
		c.next, c.w = nil, nil
	}
}

// begin starts a walk: it indexes the last walk's file and opens the new
// one; it returns the number of records of the last walk. A cache that
// cannot do either is empty for this walk.
func (c *Cache) begin() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.dropNext()
	if c.old != nil {
		c.old.Close()
		c.old, c.index = nil, nil
	}
	c.err = nil
	if f, err := os.Open(c.file); err == nil {
		if index, err := indexCache(f); err == nil {
			c.old, c.index = f, index
		} else {
			f.Close()
		}
	}
	f, err := os.CreateTemp(filepath.Dir(c.file), filepath.Base(c.file)+".new-*")
	if err != nil {
		c.err = err
		return len(c.index)
	}
	c.next, c.w = f, bufio.NewWriterSize(f, 1<<20)
	_, c.err = c.w.WriteString(cacheMagic)
	return len(c.index)
}

// indexCache reads f through once and indexes its records by key hash.
func indexCache(f *os.File) ([]cacheEntry, error) {
	r := bufio.NewReaderSize(f, 1<<20)
	magic := make([]byte, len(cacheMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != cacheMagic {
		return nil, errors.New("not a walk cache")
	}
	var index []cacheEntry
	if fi, err := f.Stat(); err == nil {
		index = make([]cacheEntry, 0, fi.Size()/300)
	}
	off := int64(len(cacheMagic))
	var buf []byte
	for {
		n, err := binary.ReadUvarint(r)
		if err == io.EOF {
			break
		}
		if err != nil || n >= 1<<24 || off >= 1<<40 {
			return nil, errors.New("torn walk cache")
		}
		head := int64(uvarintLen(n))
		buf = slices.Grow(buf[:0], int(n))[:n]
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, errors.New("torn walk cache")
		}
		key, _, _, ok := splitRecord(buf)
		if !ok {
			return nil, errors.New("bad walk cache record")
		}
		index = append(index, cacheEntry{key: cacheKey(key), at: uint64(off+head)<<24 | n})
		off += head + int64(n)
	}
	slices.SortFunc(index, func(a, b cacheEntry) int {
		if a.key != b.key {
			if a.key < b.key {
				return -1
			}
			return 1
		}
		return 0
	})
	return slices.Clip(index), nil
}

func uvarintLen(n uint64) int {
	var b [binary.MaxVarintLen64]byte
	return binary.PutUvarint(b[:], n)
}

// A record is key, ETag and data, the first two each ended by a newline
// (neither holds one: object keys and ETags of S3 and of the file store).
func splitRecord(rec []byte) (key, etag string, data []byte, ok bool) {
	k, rest, ok1 := bytes.Cut(rec, []byte{'\n'})
	e, data, ok2 := bytes.Cut(rest, []byte{'\n'})
	return string(k), string(e), data, ok1 && ok2
}

// get returns the content remembered for key when it was read at etag,
// and keeps it for the next walk.
func (c *Cache) get(key, etag string) ([]byte, bool) {
	if c == nil || etag == "" || c.old == nil {
		return nil, false
	}
	h := cacheKey(key)
	i, _ := slices.BinarySearchFunc(c.index, h, func(e cacheEntry, h uint64) int {
		if e.key < h {
			return -1
		} else if e.key > h {
			return 1
		}
		return 0
	})
	for ; i < len(c.index) && c.index[i].key == h; i++ {
		e := c.index[i]
		rec := make([]byte, e.n())
		if _, err := c.old.ReadAt(rec, e.off()); err != nil {
			return nil, false
		}
		k, et, data, ok := splitRecord(rec)
		if !ok || k != key {
			continue // another key of the same hash
		}
		if et != etag {
			return nil, false
		}
		c.write(rec)
		return data, true
	}
	return nil, false
}

// put remembers data read at etag for the next walk.
func (c *Cache) put(key, etag string, data []byte) {
	if c == nil || etag == "" || strings.ContainsAny(key+etag, "\n") || len(key)+len(etag)+2+len(data) >= 1<<24 {
		return // not to be indexed: read again next time
	}
	rec := make([]byte, 0, len(key)+len(etag)+2+len(data))
	rec = append(append(append(append(append(rec, key...), '\n'), etag...), '\n'), data...)
	c.write(rec)
}

func (c *Cache) write(rec []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w == nil || c.err != nil {
		return
	}
	var head [binary.MaxVarintLen64]byte
	if _, err := c.w.Write(head[:binary.PutUvarint(head[:], uint64(len(rec)))]); err != nil {
		c.err = err
		return
	}
	_, c.err = c.w.Write(rec)
}

// Flush writes what is buffered of this walk's file.
func (c *Cache) Flush() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.w == nil || c.err != nil {
		return c.err
	}
	return c.w.Flush()
}

// commit ends a walk that listed the whole store: its file replaces the
// last one. Objects gone from the store are in neither, so the file grows
// with the store, not with its history.
func (c *Cache) commit() error {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.next == nil {
		return nil
	}
	err := c.err
	if err == nil {
		err = c.w.Flush()
	}
	if err == nil {
		err = c.next.Close()
	} else {
		c.next.Close()
	}
	name := c.next.Name()
	c.next, c.w = nil, nil
	if err == nil {
		err = os.Rename(name, c.file)
	}
	if err != nil {
		os.Remove(name)
		return nil // a hint: the next walk reads more
	}
	if c.old != nil {
		c.old.Close()
		c.old, c.index = nil, nil
	}
	return nil
}
