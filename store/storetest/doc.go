// Package storetest is for the tests of stores and of what uses them: Run
// checks the contract every store keeps (the same one for file:// and
// S3), and Faulty fails a store's requests on demand.
package storetest
