package agentapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
)

// Backend is what the agent implements behind the API.
type Backend interface {
	Add(ctx context.Context, req AddRequest) (AddResponse, error)
	Del(ctx context.Context, req DelRequest) error
	Check(ctx context.Context, req CheckRequest) error
	List(ctx context.Context) ([]Endpoint, error)
	GC(ctx context.Context, req GCRequest) (GCResponse, error)
	Status(ctx context.Context) (Status, error)
}

// NewHandler serves the API from b. An error b returns reaches the client
// as its *Error when it is one, else with CodeIOFailure and its text.
func NewHandler(b Backend) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathAdd, serve(func(ctx context.Context, req AddRequest) (any, error) { return b.Add(ctx, req) }))
	mux.HandleFunc("POST "+PathDel, serve(func(ctx context.Context, req DelRequest) (any, error) { return nil, b.Del(ctx, req) }))
	mux.HandleFunc("POST "+PathCheck, serve(func(ctx context.Context, req CheckRequest) (any, error) { return nil, b.Check(ctx, req) }))
	mux.HandleFunc("POST "+PathGC, serve(func(ctx context.Context, req GCRequest) (any, error) { return b.GC(ctx, req) }))
	mux.HandleFunc("GET "+PathList, func(w http.ResponseWriter, r *http.Request) {
		eps, err := b.List(r.Context())
		reply(w, eps, err)
	})
	mux.HandleFunc("GET "+PathStatus, func(w http.ResponseWriter, r *http.Request) {
		st, err := b.Status(r.Context())
		reply(w, st, err)
	})
	return mux
}

func serve[Req any](fn func(context.Context, Req) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var req Req
		dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&req); err != nil {
			reply(w, nil, &Error{Code: CodeDecodeFailure, Msg: "decode request", Details: err.Error()})
			return
		}
		out, err := fn(r.Context(), req)
		reply(w, out, err)
	}
}

func reply(w http.ResponseWriter, out any, err error) {
	w.Header().Set("Content-Type", "application/json")
	if err != nil {
		e, ok := errors.AsType[*Error](err)
		if !ok {
			e = &Error{Code: CodeIOFailure, Msg: err.Error()}
		}
		w.WriteHeader(http.StatusInternalServerError)
		_ = json.NewEncoder(w).Encode(e)
		return
	}
	if out == nil {
		out = struct{}{}
	}
	_ = json.NewEncoder(w).Encode(out)
}
