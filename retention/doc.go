// Package retention walks a binary cache beside the uploader's Store, with
// no server and no database: the bucket is the truth. It owns pins and
// roots as tools write them (records.go; their keys and bodies are the
// layout package's), the walk (one streamed listing, each .narinfo read
// once per ETag thanks to a local cache file, a compact graph of hash →
// references; walk.go, with a handler per kind of key, as layout.Classify
// tells it, in walkkinds.go), gc, and verify. gc runs in
// three phases: mark (the walk and the closure of what stays: mark.go),
// plan (what goes, in which waves, and the figures: a value a dry run
// reports, plan.go) and execute (the deletions under the marker: plan.go,
// delete.go, sweep.go). The text of a .narinfo is read by the nix
// package (nix.ParseNarInfo).
//
// Invariant: a cache gc has swept is closed under references, and stays
// so while daemons push to it: no .narinfo is left whose NAR or whose
// references' .narinfos are gone.
//
// The gc side of the argument (G1, G2 and the daemon's side, D1 to D3,
// with the claim that joins them, are in the uploader package's doc):
//
//  1. gc writes the marker nixpush/gc/sweep {listed_at, deadline, kind,
//     its grace, --older-than and window} before it lists, and makes no
//     deletion after the deadline: it stops issuing deletions a margin
//     before it, and each request carries the deadline. Only one sweep
//     (gc, or verify --repair, kind "repair") runs at a time, and taking
//     the marker is one atomic step: gc reads it with its ETag; a live
//     one (unfinished, before its deadline) makes it refuse; otherwise it
//     writes its own on the condition that the marker is still what it
//     read (If-None-Match: * when there was none, If-Match its ETag when
//     finished or stale). Of two runs that read the same marker, the
//     store lets one write; the other's condition fails and it refuses
//     (ErrSweepRunning), as if it had read the winner's marker. When done,
//     even on failure, gc rewrites the marker with finished_at, If-Match
//     the ETag of its own write, and leaves it up (daemons read a bucket
//     without a marker as never swept). That condition fails only if
//     another run replaced the marker after this one's deadline, after
//     which this one deleted nothing: that marker stays, and gc warns.
//  2. It keeps the closure of every pin, of every root pushed within
//     --older-than, and of every .narinfo written within --grace of the
//     marker's time (the store's clock): such a .narinfo may belong to a
//     push in progress whose root is not written yet; so is the output of
//     a realisation written within --grace. A .narinfo it cannot read
//     (nix.ParseNarInfo: a field such as NarHash that does not parse; a
//     Sig line of another tool is no such field: it is left out, as Nix
//     ignores a signature it cannot check) is kept too, with the closure of the References it
//     names, read past the bad line; one without a References line refers
//     to nothing, as for Nix. No kept .narinfo, readable or not, loses a
//     reference. Pins and root records written after the walk listed them are found just before
//     the first deletion: gc lists nixpush/pins/ and nixpush/roots/ again,
//     reads each whose ETag the walk did not list (a new pin, a batch
//     record, a root record rewritten in place by a push of a path already
//     cached), adds the paths they name to the live set whatever their
//     pushed_at says (written during the sweep, they were pushed now),
//     marks the closure again, and only then computes what goes; such a
//     root record is not deleted. A pin written after that second listing
//     is the pin command's to check (AddPin): after writing it, it reads
//     the marker; unless the sweep finished (plus 30 s for clocks) before
//     it found the path, it polls the marker until the sweep finished or
//     its deadline plus 30 s passed, then checks the path's .narinfo, and
//     says if it is gone (the pin stays; push the path again). The
//     deletions of one sweep keep referrers before references, so the
//     .narinfo alone tells whether the pinned closure survived. verify
//     reports a pin whose path has no .narinfo (pin-missing).
//  3. First the realisations (realisations/*.doi, and Nix 2.35's
//     build-trace-v2/<drv>/<output>.doi alike) older than --grace whose
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
//     multipart uploads begun before the grace period, except those a
//     daemon keeps to resume (their marker, nixpush/uploads/<NAR file
//     name>-<id hash>, written within the grace period: the daemon
//     rewrites it every hour while its queue holds the upload; see
//     uploader/resume.go), and upload markers older than the grace.
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
//     It writes the probe twice with If-None-Match: *: the second write
//     must fail, or the store ignores conditional writes and the
//     exclusion of step 1 does not hold; gc and repair then refuse, naming
//     the store, unless told that only one of them ever runs on it
//     (--single-gc, which reads and writes the marker plainly).
//  7. Settings that break the argument are refused where they are set:
//     a grace period of zero (nothing would protect a push in progress),
//     an --older-than below the grace period (a root pushed again would
//     keep its closure for less time than a daemon trusts it; daemons
//     trust the cache for less than the grace, read from the marker), a
//     sweep window of zero.
package retention
