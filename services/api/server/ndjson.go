package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
)

// NDJSONContentType is the media type of the REST answers that stream one JSON object a line
// (HandleServerStreamNDJSON).
const NDJSONContentType = "application/x-ndjson"

// How an NDJSON answer is written out: lines are collected in a buffer of ndjsonBufferSize bytes,
// which is flushed to the client after the first line, whenever it holds ndjsonFlushSize bytes or
// more, after a line that comes ndjsonFlushInterval or more after the last flush, and at the end.
// The answer thus streams in chunks of tens of KiB, holding one message and one buffer in memory
// whatever its length, without a system call per line.
const (
	ndjsonBufferSize    = 64 << 10
	ndjsonFlushSize     = 32 << 10
	ndjsonFlushInterval = time.Second
)

// OpenStream starts the gRPC call of a REST request. ctx carries the request's metadata as the
// gateway forwards it (the bearer token among it) and is cancelled when the request ends;
// pathParams holds the path's variables by the names the path pattern gives them. It returns the
// function that receives the stream's next message (io.EOF at its end), or the call's error.
type OpenStream func(ctx context.Context, r *http.Request, pathParams map[string]string) (recv func() (proto.Message, error), err error)

// HandleServerStreamNDJSON registers on the gateway mux a REST binding for a server-streaming gRPC
// method (fullMethod, e.g. "/guestlist.v1.AuditService/ExportEvents") that answers NDJSON: each
// message of the stream as one line of protojson (the gateway's encoding), bare, where
// grpc-gateway's own binding wraps every message in {"result":...}. Register it after the
// generated bindings (Service.RegisterGateway): the mux tries the binding registered last first,
// so for the same method and path this one answers. open calls the gRPC method through the
// gateway's in-memory connection, so every interceptor (recovery, logging, authentication,
// validation, drain) applies as to any other REST call.
//
// An error before the first message (a missing or invalid token, a refusal, a bad argument, a
// tenant not found) is answered as every REST error is: the gateway's google.rpc.Status JSON with
// its details, and the HTTP status of its code. Once lines were sent, the status is 200 and an
// error ends the answer with one more line, {"error":<google.rpc.Status>}, so that a reader can
// tell a stream that failed from one that ended. The content type is NDJSONContentType.
func HandleServerStreamNDJSON(mux *runtime.ServeMux, httpMethod, pathPattern, fullMethod string, open OpenStream) error {
	err := mux.HandlePath(httpMethod, pathPattern, func(w http.ResponseWriter, r *http.Request, pathParams map[string]string) {
		ctx, cancel := context.WithCancel(r.Context())
		defer cancel()
		_, out := runtime.MarshalerForRequest(mux, r)
		actx, err := runtime.AnnotateContext(ctx, mux, r, fullMethod, runtime.WithHTTPPathPattern(pathPattern))
		if err != nil {
			runtime.HTTPError(ctx, mux, out, w, r, err)
			return
		}
		recv, err := open(actx, r, pathParams)
		if err != nil {
			runtime.HTTPError(actx, mux, out, w, r, err)
			return
		}
		forwardNDJSON(actx, mux, out, w, r, recv)
	})
	if err != nil {
		return fmt.Errorf("server: register the NDJSON binding %s %s: %w", httpMethod, pathPattern, err)
	}
	return nil
}

// forwardNDJSON writes the messages recv returns to w, one line each (see HandleServerStreamNDJSON).
func forwardNDJSON(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, recv func() (proto.Message, error)) {
	msg, err := recv()
	if err != nil && !errors.Is(err, io.EOF) {
		// Nothing sent yet: the usual error answer, with its HTTP status.
		runtime.HTTPError(ctx, mux, m, w, r, err)
		return
	}
	w.Header().Set("Content-Type", NDJSONContentType)
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	bw := bufio.NewWriterSize(w, ndjsonBufferSize)
	flush := func() error {
		if err := bw.Flush(); err != nil {
			return err
		}
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return err
		}
		return nil
	}
	lastFlush := time.Now()
	for first := true; err == nil; first = false {
		line, merr := marshalLine(m, msg)
		if merr != nil {
			err = status.Errorf(codes.Internal, "encode message %T: %v", msg, merr)
			break
		}
		if _, werr := bw.Write(line); werr != nil {
			return // the client is gone; cancelling ctx ends the call
		}
		if first || bw.Buffered() >= ndjsonFlushSize || time.Since(lastFlush) >= ndjsonFlushInterval {
			if flush() != nil {
				return
			}
			lastFlush = time.Now()
		}
		msg, err = recv()
	}
	if !errors.Is(err, io.EOF) {
		// Lines were sent with status 200: the error is the answer's last line. It is written
		// whatever ended the call, a deadline the client set (Grpc-Timeout) included: only a client
		// that is gone does not read it, and then the write fails harmlessly.
		line, merr := marshalErrorLine(m, status.Convert(err).Proto())
		if merr != nil {
			line = fmt.Appendf(nil, `{"error":{"code":%d,"message":"the stream failed; its error could not be encoded"}}`+"\n", codes.Internal)
		}
		if _, werr := bw.Write(line); werr != nil {
			return
		}
	}
	_ = flush()
}

// marshalLine encodes msg with the gateway's marshaler as one line, newline included.
func marshalLine(m runtime.Marshaler, msg proto.Message) ([]byte, error) {
	b, err := m.Marshal(msg)
	if err != nil {
		return nil, err
	}
	if bytes.IndexByte(b, '\n') >= 0 { // (a marshaler that indents: JSON strings hold no raw newline)
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil {
			return nil, err
		}
		b = c.Bytes()
	}
	return append(b, '\n'), nil
}

// marshalErrorLine encodes the line {"error":<st>} that ends a stream which failed.
func marshalErrorLine(m runtime.Marshaler, st proto.Message) ([]byte, error) {
	b, err := marshalLine(m, st)
	if err != nil {
		return nil, err
	}
	line := make([]byte, 0, len(b)+len(`{"error":}`))
	line = append(line, `{"error":`...)
	line = append(line, b[:len(b)-1]...)
	return append(line, "}\n"...), nil
}
