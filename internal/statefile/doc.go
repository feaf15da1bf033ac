// Package statefile is the one crash-safe state file of the module: the
// file identity's in-process allocator and ipam's pools keep their state
// in, and the flock(2) that gives a file or a directory one owner at a
// time (datapath locks its BPFFS directory with it).
//
// A state file is a one-line header followed by a body:
//
//	<magic> <version> <body length> <CRC-32C of the body, 8 hex digits>\n
//	<body>
//
// The magic names the kind of file, the version its body format; the
// length and checksum make a torn or damaged file detectable although it
// is only ever replaced by rename. [Format] frames and checks it; [File]
// replaces it atomically and durably: it writes a temporary file next to
// it, fsyncs it, renames it over the old one and fsyncs the directory, so
// that a crash at any point leaves the old or the new content on disk,
// never a mix.
//
// Every error about the content of a file wraps [ErrCorrupt]. Locks are
// advisory flocks that the kernel drops when their holder exits; where
// flock does not exist, taking one fails with nodeplane.ErrNotSupported.
package statefile
