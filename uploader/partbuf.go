package uploader

import "github.com/nixpush/nixpush/narpack"

// parts is the pool of the streams narpack.BigStreams allows: one buffer
// each, and one more, so that a stream sends a part while the next fills
// whenever the other stream is not doing the same (on two cores, packing
// one stream while sending another keeps both busy as well).
var parts = narpack.NewPartPool(partSize, narpack.BigStreams+1)
