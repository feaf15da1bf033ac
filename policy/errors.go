package policy

import (
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Every error the package returns wraps one of them.
var (
	// ErrInvalidPolicy: a policy document or rule does not validate. The
	// error is a *ValidationError, or several joined with errors.Join.
	ErrInvalidPolicy = errors.New("invalid policy")
	// ErrPolicyExists: Add of a policy whose kind, namespace and name are
	// already in the repository.
	ErrPolicyExists = errors.New("policy already exists")
	// ErrPolicyNotFound: Delete of a policy the repository does not hold.
	ErrPolicyNotFound = errors.New("policy not found")
	// ErrUnknownIdentity: an identity the engine has not been told about.
	ErrUnknownIdentity = errors.New("unknown identity")
	// ErrAddressInUse: a DNS answer gave an address that already has an
	// identity other than the engine's CIDR identities (an endpoint's); it
	// keeps that identity.
	ErrAddressInUse = errors.New("address has another identity")
	// ErrUnknownEndpoint: an endpoint the engine does not track.
	ErrUnknownEndpoint = errors.New("unknown endpoint")
	// ErrInvalidEndpoint: a nil or non-comparable [LocalEndpoint].
	ErrInvalidEndpoint = errors.New("invalid endpoint")
	// ErrEndpointExists: an endpoint the engine already manages.
	ErrEndpointExists = errors.New("endpoint already exists")
	// ErrInconsistent: the compiled policy map and the rules disagree. It
	// means a bug in this package; Trace reports it rather than guess.
	ErrInconsistent = errors.New("compiled policy disagrees with rules")
)

// ValidationError is one invalid field of one policy document. It wraps
// [ErrInvalidPolicy].
type ValidationError struct {
	// Source names the input (a file name), if known.
	Source string
	// Document is the 1-based index of the document in its source; 0 when
	// the policy was not read from a document.
	Document int
	// Line is the line of the offending field in the source, if known.
	Line int
	// Object names the policy ("CiliumNetworkPolicy prod/web") when its
	// kind and name were readable.
	Object string
	// Path is the field path within the object, in Kubernetes notation:
	// "spec.ingress[0].toPorts[1].ports[0].port".
	Path string
	// Reason says what is wrong.
	Reason string
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	if e.Source != "" {
		b.WriteString(e.Source)
		b.WriteString(": ")
	}
	if e.Document > 0 {
		fmt.Fprintf(&b, "document %d", e.Document)
		if e.Object != "" {
			fmt.Fprintf(&b, " (%s)", e.Object)
		}
		if e.Line > 0 {
			fmt.Fprintf(&b, ", line %d", e.Line)
		}
		b.WriteString(": ")
	} else if e.Object != "" {
		b.WriteString(e.Object)
		b.WriteString(": ")
	}
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Reason)
	return b.String()
}

// Unwrap returns [ErrInvalidPolicy].
func (e *ValidationError) Unwrap() error { return ErrInvalidPolicy }

// ValidationErrors returns the [*ValidationError]s in err, which may be a
// single one or several joined with errors.Join.
func ValidationErrors(err error) []*ValidationError {
	var out []*ValidationError
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if ve, ok := err.(*ValidationError); ok {
			out = append(out, ve)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		if u := errors.Unwrap(err); u != nil {
			walk(u)
		}
	}
	walk(err)
	return out
}
