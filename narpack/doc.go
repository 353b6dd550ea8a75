// Package narpack packs a store path as a NAR and compresses it, in one
// pass that hashes both the NAR and the compressed file, and builds the
// path's NAR listing (.ls) in the same walk: zstd (one stream, or
// independent frames on every core for a large NAR), xz (the xz tool, or a
// Go encoder without it) or none.
//
// Invariant: a NAR is never handed on as packed unless its hash and size
// are the ones the Nix database registered (ErrHashMismatch otherwise,
// before Pack returns, so a caller streaming it can refuse to complete
// the object); and the same NAR under the same Compression.Settings always
// compresses to the same bytes, which is what lets an upload cut off be
// resumed.
//
// It knows nothing of stores, buckets or keys: the uploader names the
// objects and sends the bytes. Its zstd frames take their buffers outside
// the Go heap from internal/partbuf, as the uploads' parts do.
package narpack
