// Package synthcache writes synthetic binary caches for the tests and
// benchmarks of gc and verify (see synthcache.go).
package synthcache
