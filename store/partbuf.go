package store

import "github.com/nixpush/nixpush/narpack"

// Parts is the pool of the part buffers of streaming uploads, for the
// streams narpack.BigStreams allows (the large NARs the uploader packs at
// once): one buffer each, and one more, so that a stream sends a part
// while the next fills whenever the other stream is not doing the same
// (on two cores, packing one stream while sending another keeps both busy
// as well).
var Parts = narpack.NewPartPool(PartSize, narpack.BigStreams+1)
