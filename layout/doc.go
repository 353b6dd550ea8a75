// Package layout owns the bucket's layout: the key of every object nixpush
// or Nix keeps in a binary cache, the records nixpush keeps beside the
// cache (roots, root batches, pins, gc's sweep marker, upload markers) with
// their JSON, and Classify, which tells from a key what kind of object it
// is. It knows names and record bodies only; reading and writing them is
// the callers' (uploader, retention), and narinfo text is the nix
// package's.
//
// Invariant: a key made here classifies back as its kind, and every kind
// Classify reports has one key form; whatever else a bucket holds is
// Foreign (or Nixpush, under nixpush/), never guessed at.
//
// The cache, as Nix reads it (written by the uploader, deleted by gc):
//
//	nix-cache-info                      StoreDir, WantMassQuery, Priority
//	<hash>.narinfo                      a store path's narinfo (nix writes the text)
//	nar/<nix32 hash>.nar[.zst|.xz|…]    a NAR, named by the .narinfo's URL
//	<hash>.ls                           a NAR listing (write-nar-listing)
//	log/<drv file name>                 a build log, read by `nix log`
//	realisations/<id>.doi               a realisation (Nix 2.8 to 2.34)
//	build-trace-v2/<drv>/<output>.doi   a build trace entry (Nix 2.35 on)
//
// nixpush's own, under nixpush/, which Nix never reads:
//
//	nixpush/roots/<hash>                Root: the last push of a path a daemon
//	                                    was handed (the uploader rewrites it at
//	                                    every push; gc reads it)
//	nixpush/roots/batch-<time>-<random> RootBatch: several roots pushed at once
//	                                    (the uploader writes it once; gc reads
//	                                    it and deletes it when it is old)
//	nixpush/pins/<name>                 Pin: a closure gc keeps whatever its age
//	                                    (nixpush pin and unpin write it; gc reads)
//	nixpush/gc/sweep                    Sweep: gc's (or repair's) marker, written
//	                                    by gc, read by daemons and pin
//	nixpush/gc/probe-<random>           gc's test of its delete permission
//	nixpush/preflight/<name>            the uploader's test of its write permission
//	nixpush/uploads/<NAR name>-<id>     UploadMarker: a resumable upload a daemon
//	                                    keeps (rewritten hourly; gc reads it)
package layout
