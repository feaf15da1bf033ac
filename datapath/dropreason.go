package datapath

import "github.com/nodeplane/nodeplane/datapath/monitor"

// DropReason is [monitor.DropReason]; the vocabulary of datapath records
// lives in the BPF-free package monitor so that readers of records (such as
// package flow) need not import this one.
type DropReason = monitor.DropReason

// Drop reasons, see [monitor.DropReason].
const (
	DropInvalidSourceIP  = monitor.DropInvalidSourceIP
	DropPolicyDenied     = monitor.DropPolicyDenied
	DropInvalidPacket    = monitor.DropInvalidPacket
	DropCTInvalidHeader  = monitor.DropCTInvalidHeader
	DropCTUnknownProto   = monitor.DropCTUnknownProto
	DropUnknownL3        = monitor.DropUnknownL3
	DropUnknownTarget    = monitor.DropUnknownTarget
	DropCTCreateFailed   = monitor.DropCTCreateFailed
	DropInvalidExtHeader = monitor.DropInvalidExtHeader
	DropFragmentNotFound = monitor.DropFragmentNotFound
	DropPolicyDeny       = monitor.DropPolicyDeny
	DropEndpointNotReady = monitor.DropEndpointNotReady
)
