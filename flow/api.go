package flow

import (
	"fmt"
	"time"
)

// Request selects flows from an [Observer] (flow.proto's GetFlowsRequest).
// Flows are returned oldest first. Number bounds how many past flows are
// returned: the newest Number flows, or with First the oldest Number; 0
// means every stored flow between Since and Until. Follow keeps the call
// going with new flows after the past ones (Until then ends it when a
// newer flow arrives). Allow and Deny are Hubble's whitelist and
// blacklist: a flow is returned when Allow is empty or one of its filters
// matches, and no filter of Deny matches.
type Request struct {
	Number       uint64
	First        bool
	Follow       bool
	Since, Until time.Time
	Allow, Deny  []Filter
}

// LostSource says where events were lost, with flow.proto's numbers
// (LostEventSource).
type LostSource int32

// Lost-event sources.
const (
	LostUnknown LostSource = 0
	// LostRingBuffer: the datapath found its ring buffer full (or a record
	// could not be decoded: it is lost to flows).
	LostRingBuffer LostSource = 1
	// LostEventsQueue: records the observer could not decode.
	LostEventsQueue LostSource = 2
	// LostHubbleRing: flows overwritten in the observer's ring before a
	// (slow) reader got them.
	LostHubbleRing LostSource = 3
)

func (s LostSource) String() string {
	switch s {
	case LostRingBuffer:
		return "PERF_EVENT_RING_BUFFER"
	case LostEventsQueue:
		return "OBSERVER_EVENTS_QUEUE"
	case LostHubbleRing:
		return "HUBBLE_RING_BUFFER"
	}
	return fmt.Sprintf("UNKNOWN_LOST_EVENT_SOURCE(%d)", int32(s))
}

// LostEvent reports events lost between two flows a reader received
// (flow.proto's LostEvent).
type LostEvent struct {
	Source        LostSource
	NumEventsLost uint64
	// Time is when the loss was noticed.
	Time time.Time
}

// Response is one item of a GetFlows stream: a flow, or a report of lost
// events. Exactly one of Flow and Lost is set. The pointers are valid only
// during the callback that receives them.
type Response struct {
	Flow     *Flow
	Lost     *LostEvent
	NodeName string
}

// Status describes an Observer (flow.proto's ServerStatusResponse).
type Status struct {
	// NumFlows is how many flows the ring holds, MaxFlows how many it can.
	NumFlows, MaxFlows uint64
	// SeenFlows counts every flow decoded since the start.
	SeenFlows uint64
	Uptime    time.Duration
	// Lost counts lost events by source: records the datapath could not
	// write (as of the last poll of the kernel's counter), records that
	// could not be decoded, flows readers lost to ring overruns.
	Lost map[LostSource]uint64
	// DecodeErrors counts undecodable records by reason (the error's text
	// without its variable parts: "truncated", "unknown version", ...).
	DecodeErrors map[string]uint64
}
