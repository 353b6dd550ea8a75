package layout

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/nixpush/nixpush/nix"
)

// The keys of the cache, as Nix reads it.
const (
	// CacheInfoKey is the cache's nix-cache-info.
	CacheInfoKey = "nix-cache-info"
	// NarInfoExt ends a <hash>.narinfo; ListingExt a <hash>.ls.
	NarInfoExt = ".narinfo"
	ListingExt = ".ls"
	// NarPrefix holds the NARs.
	NarPrefix = "nar/"
	// LogPrefix + <drv file name>: a build log.
	LogPrefix = "log/"
	// RealisationPrefix + <id>.doi: a realisation (Nix 2.8 to 2.34);
	// BuildTracePrefix + <drv>/<output>.doi: a build trace entry (Nix
	// 2.35 and later). Both bodies name the output as "outPath".
	RealisationPrefix = "realisations/"
	BuildTracePrefix  = "build-trace-v2/"
	// DoiExt ends a realisation and a build trace entry.
	DoiExt = ".doi"
)

// The keys nixpush keeps beside the cache, under a prefix Nix never reads.
const (
	// Prefix holds everything nixpush keeps in the bucket besides the cache.
	Prefix = "nixpush/"
	// RootPrefix + <hash part>: a Root; RootBatchPrefix + <time>-<random>:
	// a RootBatch.
	RootPrefix      = Prefix + "roots/"
	RootBatchPrefix = RootPrefix + "batch-"
	// PinPrefix + <name>: a Pin.
	PinPrefix = Prefix + "pins/"
	// SweepKey is gc's marker: a Sweep.
	SweepKey = Prefix + "gc/sweep"
	// GCProbePrefix is where gc tests its delete permission.
	GCProbePrefix = Prefix + "gc/probe-"
	// PreflightPrefix is where the uploader's write check puts and deletes
	// its probe object, apart from the cache.
	PreflightPrefix = Prefix + "preflight/"
	// UploadMarkerPrefix holds an UploadMarker per resumable upload a
	// daemon keeps (UploadMarkerKey).
	UploadMarkerPrefix = Prefix + "uploads/"
)

// NarExts are the ends of NAR keys as Nix and nixpush name them, one per
// compression (".nar" is none).
var NarExts = []string{".nar", ".nar.xz", ".nar.zst", ".nar.bz2", ".nar.br", ".nar.gz", ".nar.lz4", ".nar.lzip"}

// NarInfoKey is the object name of a store path's .narinfo.
func NarInfoKey(p string) string { return nix.HashPart(p) + NarInfoExt }

// NarKey is the object name of a NAR named by hash (nixbase32; nixpush
// names a NAR by its NAR hash, which it knows before packing, Nix by its
// file hash: only the .narinfo's URL matters) and compressed so that its
// file name extension is ext ("", ".zst", ".xz").
func NarKey(hash, ext string) string { return NarPrefix + hash + ".nar" + ext }

// ListingKey is where a binary cache holds the NAR listing of a store
// path: <hash>.ls beside <hash>.narinfo, as Nix writes it with
// write-nar-listing=true.
func ListingKey(p string) string { return nix.HashPart(p) + ListingExt }

// LogKey is where a binary cache holds the build log of the derivation
// drvPath: the object `nix store copy-log --to` writes and `nix log` reads
// from a substituter.
func LogKey(drvPath string) string { return LogPrefix + filepath.Base(drvPath) }

// RealisationKey is where a binary cache holds a realisation: what Nix 2.8
// to 2.34 write (`nix copy`) and read when substituting a
// content-addressed derivation's output.
func RealisationKey(id string) string { return RealisationPrefix + id + DoiExt }

// BuildTraceKey is where a binary cache holds the build trace entry of
// output of the derivation drvPath: what Nix 2.35 and later write and
// read instead of realisations/.
func BuildTraceKey(drvPath, output string) string {
	return BuildTracePrefix + filepath.Base(drvPath) + "/" + output + DoiExt
}

// RootKey is the object that records pushes of the root p.
func RootKey(p string) string { return RootPrefix + nix.HashPart(p) }

// NewRootBatchKey is a fresh key for a RootBatch pushed at at: its time,
// then random, so that batches of one moment from several hosts differ.
func NewRootBatchKey(at time.Time) string {
	var r [6]byte
	rand.Read(r[:])
	return RootBatchPrefix + at.Format("20060102T150405.000000000Z") + "-" + hex.EncodeToString(r[:])
}

// PinKey is the object of the pin name (see CheckPinName).
func PinKey(name string) string { return PinPrefix + name }

// UploadMarkerKey is the marker of upload id of object key.
func UploadMarkerKey(key, id string) string {
	sum := sha256.Sum256([]byte(id))
	return UploadMarkerPrefix + strings.TrimLeft(path.Base(key), ".") + "-" + hex.EncodeToString(sum[:8])
}
