package flow

import "github.com/nodeplane/nodeplane/datapath/monitor"

// Filter is one of Hubble's flow filters (flow.proto's FlowFilter), with
// its field names, for the fields the datapath's flows can carry. The
// fields of one Filter AND; the values within one field OR; a list of
// Filters ORs (see [Compile]). Strings take Hubble's syntax: an IP or a
// CIDR; "namespace/pod-name-prefix" (a pod without "/" is in namespace
// "default", as in Hubble;
// "namespace/" is the whole namespace); a label selector in Kubernetes
// syntax with Cilium's source prefixes ("k8s:app=web", "app in (a,b)",
// "!debug"); a "namespace/name" service; a protocol name ("tcp", "udp",
// "icmp", "icmpv4", "icmpv6", "sctp"); a decimal port.
type Filter struct {
	SourceIP            []string
	SourcePod           []string
	SourceLabel         []string
	SourceService       []string
	SourceIdentity      []uint32
	DestinationIP       []string
	DestinationPod      []string
	DestinationLabel    []string
	DestinationService  []string
	DestinationIdentity []uint32

	TrafficDirection []TrafficDirection
	Verdict          []Verdict
	DropReasonDesc   []monitor.DropReason
	Interface        []Interface // a zero Index or empty Name matches any
	EventType        []EventTypeFilter
	Protocol         []string
	SourcePort       []string
	DestinationPort  []string
	// Reply: as Hubble, a dropped flow whose reply flag is unknown counts
	// as not a reply; other flows with an unknown flag match neither.
	Reply []bool
	// TCPFlags: a flow matches when it carries all flags of one element.
	TCPFlags  []monitor.TCPFlags
	NodeName  []string // a pattern: "*" matches within a name segment
	IPVersion []IPVersion

	// L7 fields (Hubble's http_status_code: "200" or a prefix "4+";
	// http_method, case-insensitive; http_path and http_url, regular
	// expressions on the URL's path and the whole URL; http_header, exact
	// key and value; dns_query, a regular expression on the query). The
	// HTTP ones need EventType to be empty or to include access-log
	// records (type 129), as in Hubble.
	HTTPStatusCode []string
	HTTPMethod     []string
	HTTPPath       []string
	HTTPURL        []string
	HTTPHeader     []HTTPHeader
	DNSQuery       []string
}

// EventTypeFilter is flow.proto's EventTypeFilter: the Cilium message type,
// and the subtype when MatchSubType.
type EventTypeFilter struct {
	Type         int32
	MatchSubType bool
	SubType      int32
}
