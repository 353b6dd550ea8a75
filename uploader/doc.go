// Package uploader pushes store paths and their closures to a Nix binary
// cache: it walks each closure dependencies first, skips what the cache
// already holds, packs every other path as a NAR (go-nix), compresses, hashes
// and uploads it in one streaming pass, checks the NAR hash against the Nix
// database, signs, and writes the .narinfo last.
//
// Invariant: a .narinfo is written only after its NAR and after the .narinfo
// of every reference, so the cache is valid for every Nix at every moment,
// whatever the number of parallel jobs and wherever an upload stops. The
// one exception is deliberate: a reference a Filter leaves out (by name,
// or as signed by an upstream cache) is listed but not uploaded; the
// consumer gets it from that upstream.
//
// Beside the paths it uploads what goes with them: a path's NAR listing
// (<hash>.ls), built in the same walk that packs the NAR, before the
// path's .narinfo; and, once a derivation's outputs are in the cache, its
// build log (log/<drv>) and, for a content-addressed derivation, its signed
// realisations (realisations/<id>.doi for Nix 2.8 to 2.34, and
// build-trace-v2/<drv>/<output>.doi for Nix 2.35 and later).
//
// With a Journal (the daemon's queue), a large NAR's multipart upload to
// S3 is recorded part by part and resumed after a restart or a crash:
// the parts the store holds are checked against the NAR packed again
// (same settings, same bytes) and only the rest is sent; an upload that
// cannot be resumed starts over and the log says why (resume.go,
// docs/resumable-uploads.md). The .narinfo still follows the completed
// NAR.
//
// The store package's Store hides whether the cache is an S3 bucket or a
// file:// directory; nothing here can tell them apart. Store errors are
// classified there, once, where they are understood (store.StoreError),
// and Preflight checks a store the way the daemon and nixpush check do;
// init.go prepares a cache (the store's own preparation, then
// nix-cache-info) and holds the IAM policies of nixpush init. The
// requests of Stats are counted by a store.Count around Config.Store.
//
// # Knowledge with a lifetime
//
// What the uploader remembers of the cache (which .narinfos it found there
// or wrote, and when) is a hint, never the truth: objects vanish behind its
// back (gc, an expiry rule, a wiped bucket, one restored from a backup). A
// path seen longer ago than Config.TrustCacheFor is checked again by the
// next push that needs it (one listing, or existence checks in parallel)
// and uploaded again when it is gone, however deep in the closure; a
// .narinfo is written only when the .narinfo of each of its references was
// written by the same push or seen in the cache within that window.
// Recheck (an explicit `nixpush push`) trusts nothing: it checks the whole
// closure and nix-cache-info. Every root a push completes is recorded, for
// gc to keep what builders still push: a lone root in nixpush/roots/<hash
// part> ({"path", "pushed_at", "host"}), rewritten at each push; the roots
// of a push of several (a daemon's push cycle gathers the builds of a
// moment) in one nixpush/roots/batch-<time>-<random> ({"paths",
// "pushed_at", "host"}), written once.
//
// The trust window must stay below gc's grace period: gc never deletes a
// .narinfo or NAR younger than its grace, nor the closure of such a
// .narinfo, so a path this uploader wrote cannot be deleted by gc while
// it still trusts it. A path it only saw (written long ago) can be; the
// re-check below is what covers that.
//
// # Pushing while gc runs
//
// The retention package's gc, verify --repair and any number of daemons
// may work on one bucket at once. gc keeps its side (argued in its own
// package doc; repair keeps the same, as a sweep of its own kind):
//
//	G1. Before it lists the bucket it writes the marker nixpush/gc/sweep
//	    {"listed_at", "deadline", "host", "kind", its settings}, with a
//	    conditional write: created only if there is none (If-None-Match),
//	    or replacing one only as it read it (If-Match), and only when that
//	    one says finished or its deadline has passed. So one sweep, gc's
//	    or repair's, runs at a time. It deletes nothing after the deadline
//	    (it lists again instead), and after its last deletion it rewrites
//	    the marker with "finished_at" (If-Match its own write) and leaves
//	    it up: the marker is never removed, so a bucket without one has
//	    never been swept.
//	G2. It deletes only objects its listing showed. It keeps the closure
//	    (.narinfos and NARs) of every .narinfo younger than the grace
//	    period, and never deletes a NAR younger than the grace period;
//	    repair deletes only .narinfos whose NAR or reference it found gone.
//
// The uploader keeps this side:
//
//	D1. A NAR is written before its .narinfo, and a .narinfo after those of
//	    its references (uploaded by the push, or seen in the cache).
//	D2. A push keeps a ledger (settle.go) of what it relied on: the
//	    .narinfos of the roots it found in the cache and of the references
//	    of the .narinfos it wrote that it did not write; and of what it
//	    wrote: .narinfos, their NARs and listings, and the objects it
//	    rewrote under a key a sweep may have listed before (a lone root
//	    record, a build log, a realisation). After its writes, roots
//	    recorded, it reads the marker. Let S be the oldest of the sightings
//	    of what it relied on and of the starts of its writes. If there is
//	    no marker, or it says the sweep finished (plus 30 s for clocks that
//	    disagree, Config.ClockSkew) before S, the push is done, unless a
//	    path it relied on has no sighting at all (another push found it
//	    gone since, or the knowledge of the cache was dropped): that forces
//	    the check. (A marker gone after the daemon read one, removed by an
//	    older gc or by hand, counts as a sweep whose deadline has passed.)
//	    Otherwise, while the sweep is unfinished and its deadline (plus
//	    30 s) ahead, it reads the marker again every few seconds (at most
//	    Config.MaxSweepWait); then it checks that everything in the ledger
//	    is there (one listing or checks in parallel). What is missing it
//	    uploads again (a path it wrote, whatever the cache says of its
//	    .narinfo), with whatever is missing of its closure, dependencies
//	    first, and writes again the objects gone, as a new round that ends
//	    with D2 again.
//	D3. A push succeeds, and its queue items are completed, only after D2
//	    found nothing missing. A push that did not complete (failed,
//	    stopped, killed, or waited past its limit) is pushed again as a
//	    Recheck: it first waits out any sweep as in D2, then checks every
//	    path of its closures, the .narinfo and the NAR (the key it would
//	    write, else the one the .narinfo names), uploads again whatever is
//	    missing, and ends with D2 for what it relied on and wrote.
//
// Claim: no .narinfo a completed push wrote or relied on is left, by a gc
// or a repair, missing or with a missing NAR or reference, whatever the
// number of daemons and sweeps overlapping it; nor is a root record it
// wrote in place. Let N be such an object, relied on since, or written
// at, W, and X an object it relies on (N itself, its NAR, a reference's
// .narinfo). Let G be a sweep that deletes X; by G2, X was in G's
// listing, which began at L after G wrote its marker (G1).
//
//  1. If L > W and G is a gc, G's listing shows N: G keeps N (as younger
//     than the grace period by G2, or as part of a root's or pin's
//     closure) and with it X, or deletes N too, which the push's check
//     sees (N is in its ledger). If G is a repair, it deletes only what
//     it found broken; whatever it deletes of the ledger the check sees.
//     So take L < W.
//  2. The daemon reads the marker at M > W (D2; a marker it cannot read
//     fails the push, see D3). G's marker went up before L < W < M and is
//     never removed, so the marker read is G's or a later sweep's
//     (sweeps do not overlap, G1: the conditional writes make the check
//     and the claim one step). If it is finished before S, so is G, which
//     therefore deleted X before the push saw X present at S (or began
//     writing it): X was written again since, and no sweep deletes
//     anything between S and M; a sweep listing after M is step 1.
//     Otherwise the daemon re-checks. If G made its last deletion before
//     the daemon's check, the check sees X missing. Otherwise G's marker,
//     up from before L until after its last deletion (G1), is up and
//     unfinished while the daemon polls (it is the only one: no other
//     sweep runs meanwhile), so the daemon waits until G says it finished
//     or its deadline plus the skew margin has passed, after which G
//     deletes nothing (G1): again the check begins after G's last
//     deletion and sees X missing.
//  3. The daemon then writes X again (D1), after its missing dependencies;
//     N is whole again, and the new objects are covered by the same
//     argument in the next round. A round that finds nothing missing ends
//     the push (D3); a push still finding losses after maxRounds fails and
//     is retried, so nothing is completed with X missing.
//  4. If the daemon stops between W and the end of D2, or D2 fails (a
//     request, the wait limit), the push did not complete (D3): its
//     Recheck waits out any sweep, so every sweep that listed before W has
//     made its last deletion (step 2), then checks every .narinfo and NAR
//     of the closure, finds X missing (a NAR under a .narinfo that is
//     there too) and writes it again.
//
// A root record rewritten in place is an X of its own: a gc that listed
// the old record, expired, deletes it with the closure it kept alive; the
// check finds both gone and writes them again (gc also reads the roots
// and pins again just before it deletes: see its package doc). A NAR this
// push overwrote under a key that G listed and deleted (a path pushed
// again after its .narinfo was collected) is one of the NARs D2 checks.
// And for knowledge older than the trust window (an expiry rule, a
// hand-deleted object, which keep no protocol), the first paragraph's
// window bounds how long the daemon can believe in it.
//
// The daemon compares its settings with those gc writes in its marker: a
// trust window not below gc's grace, or above its --older-than, and a
// wait limit below its sweep window, are reported (SettingsProblem), and
// while they do not fit the uploader trusts nothing it remembers.
package uploader
