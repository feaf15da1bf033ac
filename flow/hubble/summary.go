package hubble

import "github.com/nodeplane/nodeplane/flow"

// Summary returns the text Hubble puts in a flow's Summary field; it is
// [flow.Flow.Summary], kept here for callers of this package.
func Summary(f *flow.Flow) string { return f.Summary() }
