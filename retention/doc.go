// Package retention walks a binary cache beside the uploader's Store, with
// no server and no database: the bucket is the truth. It owns the layout
// nixpush keeps under nixpush/ (roots, pins, gc's marker), the walk (one
// streamed listing, each .narinfo read once per ETag thanks to a local
// cache file, a compact graph of hash → references), gc, and verify.
//
// Invariant: a cache gc has swept is closed under references, and stays
// so while daemons push to it: no .narinfo is left whose NAR or whose
// references' .narinfos are gone.
//
// The gc side of the argument (G1, G2 and the daemon's side, D1 to D3,
// with the claim that joins them, are in the uploader package's doc):
//
//  1. gc writes the marker nixpush/gc/sweep {listed_at, deadline} before
//     it lists, and makes no deletion after the deadline: it stops
//     issuing deletions a margin before it, and each request carries the
//     deadline. When done, even on failure, it rewrites the marker with
//     finished_at and leaves it up (daemons read a bucket without a marker
//     as never swept). A live, unfinished marker of another gc makes gc
//     refuse to start.
//  2. It keeps the closure of every pin, of every root pushed within
//     --older-than, and of every .narinfo written within --grace of the
//     marker's time (the store's clock): such a .narinfo may belong to a
//     push in progress whose root is not written yet; so is the output of
//     a realisation written within --grace. A .narinfo it cannot read (a
//     field such as NarHash that does not parse; a Sig line of another
//     tool is no such field: it is left out, as Nix ignores a signature
//     it cannot check) is kept too, with the closure of the References it
//     names, read past the bad line; one without a References line refers
//     to nothing, as for Nix. No kept .narinfo, readable or not, loses a
//     reference.
//  3. First the realisations (realisations/*.doi) older than --grace whose
//     outPath is not kept are deleted, so none is ever left pointing at a
//     deleted .narinfo. (One written after the listing follows its
//     output's push, which recorded the output as a recent root: kept.)
//     Every other .narinfo is then deleted in waves, a path only after every
//     deleted path referring to it: a gc stopped half-way (crash, deadline)
//     leaves no surviving .narinfo whose reference is gone. A kept
//     .narinfo never refers to a deleted one, since the kept set is closed
//     under references.
//  4. Then the NARs no kept .narinfo names, if written before the grace
//     period (a NAR goes up before its .narinfo: a younger one may be a
//     push in progress), the NAR listings (<hash>.ls) of deleted paths and
//     orphaned ones as old, the build logs (log/<drv>) as old of
//     derivations no kept .narinfo names as Deriver (a log goes up after
//     its outputs), then the root records of deleted roots and the batch
//     root records older than --older-than (which keep nothing), then
//     multipart uploads begun before the grace period.
//  5. A push that overlaps: a .narinfo written before the marker is
//     listed (the listing starts after it) and, its push being in progress,
//     within the grace period, so kept with its closure (2). One written
//     after the marker may be missed by the listing, and its references
//     deleted; but the daemon that wrote it reads the marker after writing,
//     finds it unfinished or finished after the daemon's sightings, waits
//     for the deadline (after which this gc deletes nothing, 1) and checks
//     again, uploading again, what it relied on. Either way every
//     .narinfo ends with its NAR and its references, provided the grace
//     period exceeds a push's duration from its first NAR to its root's
//     .narinfo (seconds to minutes; the default is 24 h).
//  6. Deleting needs s3:DeleteObject, which the builders' policy rightly
//     lacks: gc writes and deletes a probe object before anything else, so
//     credentials that cannot delete fail at once, having deleted nothing.
package retention
