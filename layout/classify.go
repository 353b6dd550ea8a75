package layout

import (
	"strconv"
	"strings"
)

// Kind is what an object of the bucket is, told from its key alone.
type Kind uint8

// The kinds of object, one per key form (see the package doc).
const (
	// KindForeign is anything else in the bucket: nixpush reads and deletes
	// none of it.
	KindForeign Kind = iota
	KindCacheInfo
	KindNarInfo
	KindNAR
	KindListing
	KindLog
	KindRealisation
	KindBuildTrace
	KindRoot
	KindRootBatch
	KindPin
	KindSweep
	KindUploadMarker
	KindProbe
	// KindNixpush is any other key under Prefix: nixpush's, of a kind this
	// version does not know.
	KindNixpush
	numKinds
)

var kindNames = [numKinds]string{
	KindForeign: "foreign", KindCacheInfo: "nix-cache-info", KindNarInfo: "narinfo", KindNAR: "nar", KindListing: "listing",
	KindLog: "log", KindRealisation: "realisation", KindBuildTrace: "build-trace", KindRoot: "root", KindRootBatch: "root-batch",
	KindPin: "pin", KindSweep: "sweep", KindUploadMarker: "upload-marker", KindProbe: "probe", KindNixpush: "nixpush",
}

func (k Kind) String() string {
	if k >= numKinds {
		return "kind(" + strconv.Itoa(int(k)) + ")"
	}
	return kindNames[k]
}

// Classify tells what kind of object key is.
func Classify(key string) Kind {
	k, _ := Parse(key)
	return k
}

// Parse tells what kind of object key is, and the name its key carries:
//
//	KindNarInfo, KindListing, KindRoot  the hash part
//	KindNAR                             the file name under nar/
//	KindLog                             the derivation's file name
//	KindRealisation                     the id
//	KindBuildTrace                      <drv>/<output>
//	KindRootBatch                       <time>-<random>
//	KindPin                             the pin's name, unchecked (see CheckPinName)
//	KindUploadMarker, KindProbe         what follows their prefix
//	KindForeign, KindNixpush            the key itself
//
// A <hash>.narinfo or <hash>.ls is one at the top level with 32 characters
// before its extension; a log ends in .drv and a realisation or build trace
// entry in .doi; a root's hash part has 32 characters. Anything else under
// those prefixes is KindForeign, or KindNixpush under Prefix.
func Parse(key string) (Kind, string) {
	switch {
	case isHashKey(key, NarInfoExt):
		return KindNarInfo, key[:32]
	case isHashKey(key, ListingExt):
		return KindListing, key[:32]
	case key == CacheInfoKey:
		return KindCacheInfo, ""
	case strings.HasPrefix(key, NarPrefix):
		return KindNAR, key[len(NarPrefix):]
	case strings.HasPrefix(key, LogPrefix) && strings.HasSuffix(key, ".drv"):
		return KindLog, key[len(LogPrefix):]
	case strings.HasPrefix(key, RealisationPrefix) && strings.HasSuffix(key, DoiExt):
		return KindRealisation, strings.TrimSuffix(key[len(RealisationPrefix):], DoiExt)
	case strings.HasPrefix(key, BuildTracePrefix) && strings.HasSuffix(key, DoiExt):
		return KindBuildTrace, strings.TrimSuffix(key[len(BuildTracePrefix):], DoiExt)
	case !strings.HasPrefix(key, Prefix):
		return KindForeign, key
	}
	return parseOwn(key)
}

// parseOwn tells the kind of a key under Prefix.
func parseOwn(key string) (Kind, string) {
	switch {
	case strings.HasPrefix(key, RootBatchPrefix):
		return KindRootBatch, key[len(RootBatchPrefix):]
	case strings.HasPrefix(key, RootPrefix):
		if h := key[len(RootPrefix):]; len(h) == 32 && !strings.Contains(h, "/") {
			return KindRoot, h
		}
	case strings.HasPrefix(key, PinPrefix):
		return KindPin, key[len(PinPrefix):]
	case key == SweepKey:
		return KindSweep, ""
	case strings.HasPrefix(key, UploadMarkerPrefix):
		return KindUploadMarker, key[len(UploadMarkerPrefix):]
	case strings.HasPrefix(key, GCProbePrefix):
		return KindProbe, key[len(GCProbePrefix):]
	case strings.HasPrefix(key, PreflightPrefix):
		return KindProbe, key[len(PreflightPrefix):]
	}
	return KindNixpush, key
}

// isHashKey reports whether key is a top-level <hash><ext>.
func isHashKey(key, ext string) bool {
	return len(key) == 32+len(ext) && strings.HasSuffix(key, ext) && !strings.Contains(key, "/")
}
