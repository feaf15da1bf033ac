// Package flow turns the datapath's records into Hubble flows: a decoder
// from every record to a [Flow] with Hubble's field semantics, enrichment
// with names and labels as they were when the packet passed ([Catalog]),
// Hubble's filters ([Filter], [Compile]), a ring of the last flows with
// follow/since/until/first/last and lost-event accounting ([Ring]), and an
// [Observer] that reads records, decodes, enriches, stores and serves them.
// Output in the JSON of `hubble observe -o jsonpb` is [Flow.AppendJSON];
// Prometheus metrics with Hubble's and Cilium's names live in the
// subpackage flow/metrics, so that importing flow does not import
// client_golang.
//
// Flows carry flow.proto's numbers for every enum (Verdict,
// TrafficDirection, ObservationPoint, TraceReason, ...), so a gRPC server
// (Hubble's Observer API) converts a Flow to the protobuf field by field
// with casts.
//
// Importing flow costs the standard library, datapath/monitor and identity
// (both std only) and golang.org/x/sys/unix for the clock: `go list -deps
// ./flow | wc -l` is 81 packages (datapath: 172; flow/metrics, with
// client_golang: 240). Neither BPF nor gRPC.
//
// # Enrichment
//
// A [Catalog] holds what the agent knows about addresses (local endpoints
// and remote pods: ID, namespace, pod name), identities (labels),
// service frontends (name, namespace) and interfaces, each with a short
// history. [Catalog.SyncIdentities] keeps the labels in step with an
// identity.Allocator; the agent sets endpoints when it adds or deletes them
// (datapath.EndpointConfig has the addresses), remote pods from its
// ipcache source, and services from its lb configuration.
//
// # L7 flows
//
// The node's L7 proxies (proxy/httpproxy, proxy/dnsproxy) report each
// request and response as an [L7Record]; [Observer.RecordL7] turns it into
// a Flow of Type L7 with its [Layer7] record (flow.proto's Layer7: HTTP
// method, URL, protocol, code, headers, latency; DNS query, answers, TTL,
// rcode, types, observation source), enriched like the datapath's flows
// and stored in the same ring, so filters (also Hubble's http_* and
// dns_query), JSON, metrics and the Hubble API serve both. A denied
// request is DROPPED, as Hubble shows Envoy's denials; [Flow.Summary] is
// Hubble's text for either kind ("HTTP/1.1 GET http://svc/public/x").
//
// # Hot path
//
// [Decoder.Decode] decodes a record into a caller's *Flow without
// allocating; labels and names are shared, immutable slices and strings
// from the Catalog. A record that is truncated or garbage is rejected with
// an error wrapping monitor.ErrMalformed; the Observer counts it by reason
// and goes on.
package flow
