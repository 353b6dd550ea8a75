package retention

import (
	"bytes"
	"encoding/binary"
	"hash/maphash"
	"slices"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nixpush/nixpush/layout"
)

// The graph's storage, compact at a million paths: a node's hash part and
// its deriver's are 20 bytes each (nixbase32-decoded), its name and NAR key
// pieces of one arena of bytes, its references a span of shared chunks of
// int32, and the indexes from hash part and NAR key are open-addressing
// tables of int32 into the nodes and the NARs (no map of strings). Nodes,
// NARs, references and names all grow a chunk at a time, never copying
// what they hold: a slice that doubles holds its old and new arrays at
// once, which at a million nodes is 200 MB for a moment. None of it holds
// a pointer, so the collector does not scan it. About 250 bytes a path
// with its NAR, against some 700 as strings and maps.

// str is a string in the graph's arena.
type str struct{ off, n uint32 }

// span is a node's references in g.refArena.
type span struct{ off, n uint32 }

// arenaChunk is the size of the arena's chunks: it grows a chunk at a
// time, never copying what it holds.
const arenaChunk = 1 << 20

// addStr copies s into the arena.
func (g *Graph) addStr(s string) str {
	if s == "" {
		return str{}
	}
	if len(s) > arenaChunk {
		s = s[:arenaChunk] // no store path or NAR key is this long
	}
	last := len(g.arena) - 1
	if last < 0 || len(g.arena[last])+len(s) > arenaChunk {
		g.arena = append(g.arena, make([]byte, 0, arenaChunk))
		last++
	}
	c := g.arena[last]
	off := uint32(last)*arenaChunk + uint32(len(c))
	g.arena[last] = append(c, s...)
	return str{off: off, n: uint32(len(s))}
}

// bytesOf is the bytes of s, in the arena (not to be kept or changed).
func (g *Graph) bytesOf(s str) []byte {
	if s.n == 0 {
		return nil
	}
	c := g.arena[s.off/arenaChunk]
	o := s.off % arenaChunk
	return c[o : o+s.n]
}

// str is s as a string.
func (g *Graph) str(s str) string { return string(g.bytesOf(s)) }

// chunkShift sets the size of the chunks of nodes and NARs: 1<<16.
const chunkShift = 16

// chunked is a growing array that allocates a chunk at a time.
type chunked[T any] struct {
	chunks [][]T
	n      int
}

func (c *chunked[T]) at(i int32) *T {
	return &c.chunks[i>>chunkShift][i&(1<<chunkShift-1)]
}

func (c *chunked[T]) len() int { return c.n }

func (c *chunked[T]) add(v T) int32 {
	if c.n>>chunkShift == len(c.chunks) {
		c.chunks = append(c.chunks, make([]T, 1<<chunkShift))
	}
	i := int32(c.n)
	c.n++
	*c.at(i) = v
	return i
}

// node is node i.
func (g *Graph) node(i int32) *node { return g.nodes.at(i) }

// nodeCount is the number of nodes.
func (g *Graph) nodeCount() int { return g.nodes.len() }

// nar is NAR j.
func (g *Graph) nar(j int32) *narObject { return g.narList.at(j) }

// refChunk is the size of a chunk of references; a node's references lie
// in one chunk (one of more gets a chunk of its own).
const refChunk = 1 << 20

// addRefs stores a node's references.
func (g *Graph) addRefs(refs []int32) span {
	if len(refs) == 0 {
		return span{}
	}
	last := len(g.refChunks) - 1
	if last < 0 || len(g.refChunks[last])+len(refs) > cap(g.refChunks[last]) {
		g.refChunks = append(g.refChunks, make([]int32, 0, max(refChunk, len(refs))))
		last++
	}
	c := g.refChunks[last]
	off := uint32(last)<<20 | uint32(len(c))
	g.refChunks[last] = append(c, refs...)
	return span{off: off, n: uint32(len(refs))}
}

// refsOf is the nodes node i refers to.
func (g *Graph) refsOf(i int32) []int32 {
	r := g.node(i).refs
	if r.n == 0 {
		return nil
	}
	c, o := g.refChunks[r.off>>20], r.off&(1<<20-1)
	return c[o : o+r.n : o+r.n]
}

// hashOf is node i's hash part, as in its store path.
func (g *Graph) hashOf(i int32) string {
	if h, ok := g.oddHash[i]; ok {
		return h
	}
	return nixbase32.EncodeToString(g.node(i).hash[:])
}

// decodeHash is the 20 bytes of a hash part, when it is nixbase32 and
// reads back the same.
func decodeHash(h string) ([20]byte, bool) {
	var out [20]byte
	if len(h) != 32 {
		return out, false
	}
	b, err := nixbase32.DecodeString(h)
	if err != nil || len(b) != 20 {
		return out, false
	}
	copy(out[:], b)
	return out, nixbase32.EncodeToString(out[:]) == h
}

// lookup is the node of hash part h, if any.
func (g *Graph) lookup(h string) (int32, bool) {
	d, ok := decodeHash(h)
	if !ok {
		i, ok := g.oddIndex[h]
		return i, ok
	}
	i, _ := g.find(d)
	return i, i >= 0
}

// find is the node of d, or -1 and the slot where it goes.
func (g *Graph) find(d [20]byte) (int32, int) {
	if len(g.slots) == 0 {
		return -1, -1
	}
	mask := len(g.slots) - 1
	for s := int(binary.LittleEndian.Uint64(d[:8])) & mask; ; s = (s + 1) & mask {
		v := g.slots[s]
		if v == 0 {
			return -1, s
		}
		if n := g.node(v - 1); n.hash == d && !n.odd {
			return v - 1, s
		}
	}
}

// intern returns the node of hash part h, adding it when new.
func (g *Graph) intern(h string) int32 {
	d, ok := decodeHash(h)
	if !ok {
		if i, ok := g.oddIndex[h]; ok {
			return i
		}
		i := g.newNode(node{odd: true, nar: -1})
		g.oddIndex[h] = i
		g.oddHash[i] = h
		return i
	}
	i, s := g.find(d)
	if i >= 0 {
		return i
	}
	if s < 0 || 2*(g.inSlots+1) > len(g.slots) {
		g.grow()
		_, s = g.find(d)
	}
	i = g.newNode(node{hash: d, nar: -1})
	g.slots[s] = i + 1
	g.inSlots++
	return i
}

// presize sizes the indexes for n nodes and NARs, so that a walk of a
// cache of known size does not rehash them as they grow.
func (g *Graph) presize(n int) {
	size := 1024
	for size < 2*n {
		size *= 2
	}
	g.slots = make([]int32, size)
	g.narSlots = make([]int32, size)
}

func (g *Graph) newNode(n node) int32 { return g.nodes.add(n) }

// grow doubles the hash part index.
func (g *Graph) grow() {
	slots := make([]int32, max(1024, 2*len(g.slots)))
	mask := len(slots) - 1
	for _, v := range g.slots {
		if v == 0 {
			continue
		}
		d := g.node(v - 1).hash
		s := int(binary.LittleEndian.Uint64(d[:8])) & mask
		for slots[s] != 0 {
			s = (s + 1) & mask
		}
		slots[s] = v
	}
	g.slots = slots
}

var narSeed = maphash.MakeSeed()

// parseNARKey is the digest and end (index in layout.NarExts, plus one) of a NAR
// key of the usual form, which reads back the same.
func parseNARKey(key string) (d [32]byte, ext uint8, ok bool) {
	const n = len(layout.NarPrefix) + 52
	if len(key) <= n || key[:len(layout.NarPrefix)] != layout.NarPrefix {
		return d, 0, false
	}
	e := slices.Index(layout.NarExts, key[n:])
	if e < 0 {
		return d, 0, false
	}
	var src [52]byte
	copy(src[:], key[4:n])
	if m, err := nixbase32.Decode(d[:], src[:]); err != nil || m != 32 {
		return d, 0, false
	}
	var back [52]byte
	nixbase32.Encode(back[:], d[:])
	if back != src {
		return d, 0, false
	}
	return d, uint8(e + 1), true
}

// narHashOf hashes a NAR key for the index, from its digest when it has one.
func narHashOf(d *[32]byte, ext uint8, key string) uint64 {
	if ext != 0 {
		return maphash.Bytes(narSeed, d[:]) + uint64(ext)
	}
	return maphash.String(narSeed, key)
}

// appendNARKey appends the key of NAR j to dst.
func (g *Graph) appendNARKey(dst []byte, j int32) []byte {
	o := g.nar(j)
	if o.ext == 0 {
		return append(dst, g.bytesOf(o.key)...)
	}
	var enc [52]byte
	nixbase32.Encode(enc[:], o.digest[:])
	return append(append(append(dst, layout.NarPrefix...), enc[:]...), layout.NarExts[o.ext-1]...)
}

// compareNARKeys orders NARs a and b by key, allocating nothing.
func (g *Graph) compareNARKeys(a, b int32) int {
	var x, y [128]byte
	return bytes.Compare(g.appendNARKey(x[:0], a), g.appendNARKey(y[:0], b))
}

// narLookup is the NAR of key, if any.
func (g *Graph) narLookup(key string) (int32, bool) {
	i, _ := g.narFind(key)
	return i, i >= 0
}

func (g *Graph) narFind(key string) (int32, int) {
	if len(g.narSlots) == 0 {
		return -1, -1
	}
	d, ext, _ := parseNARKey(key)
	mask := len(g.narSlots) - 1
	for s := int(narHashOf(&d, ext, key)) & mask; ; s = (s + 1) & mask {
		v := g.narSlots[s]
		if v == 0 {
			return -1, s
		}
		o := g.nar(v - 1)
		if o.ext == ext && (ext != 0 && o.digest == d || ext == 0 && string(g.bytesOf(o.key)) == key) {
			return v - 1, s
		}
	}
}

// internNAR returns the index of NAR key, adding it when new.
func (g *Graph) internNAR(key string) int32 {
	i, s := g.narFind(key)
	if i >= 0 {
		return i
	}
	if s < 0 || 2*(g.narList.len()+1) > len(g.narSlots) {
		slots := make([]int32, max(1024, 2*len(g.narSlots)))
		mask := len(slots) - 1
		for j := range int32(g.narList.len()) {
			o := g.nar(j)
			s := int(narHashOf(&o.digest, o.ext, g.str(o.key))) & mask
			for slots[s] != 0 {
				s = (s + 1) & mask
			}
			slots[s] = j + 1
		}
		g.narSlots = slots
		_, s = g.narFind(key)
	}
	o := narObject{}
	if d, ext, ok := parseNARKey(key); ok {
		o.digest, o.ext = d, ext
	} else {
		o.key = g.addStr(key)
	}
	i = g.narList.add(o)
	g.narSlots[s] = i + 1
	return i
}

// narKey is the key of NAR j.
func (g *Graph) narKey(j int32) string {
	var b [128]byte
	return string(g.appendNARKey(b[:0], j))
}
