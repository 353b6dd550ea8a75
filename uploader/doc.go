// Package uploader pushes store paths and their closures to a Nix binary
// cache: it walks each closure dependencies first, skips what the cache
// already holds, packs every other path as a NAR (go-nix), compresses, hashes
// and uploads it in one streaming pass, checks the NAR hash against the Nix
// database, signs, and writes the .narinfo last.
//
// Invariant: a .narinfo is written only after its NAR and after the .narinfo
// of every reference, so the cache is valid for every Nix at every moment,
// whatever the number of parallel jobs and wherever an upload stops.
//
// The Store interface hides whether the cache is an S3 bucket or a file://
// directory; nothing above it can tell them apart. Store errors are
// classified once, where they are understood (StoreError: unreachable,
// certificate, credentials, bucket missing, access denied), and Preflight
// checks a store the way the daemon and nixpush check do.
package uploader
