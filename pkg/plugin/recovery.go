package plugin

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A handler panic must never take the process down: gRPC does not recover
// panics in handlers, so one bad request would end every resource's
// sockets and streams, and with them every device of the node. The
// interceptors below turn a panic into codes.Internal for that one call,
// logged with the method and the stack; other calls and streams go on.
// (A panic in a goroutine a handler starts is not covered: handlers start
// none.)

// RecoverUnary recovers a panicking unary handler (see above); every gRPC
// server of the plugin, the DRA driver's included, uses it.
func RecoverUnary(log *slog.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
		defer func() {
			if p := recover(); p != nil {
				resp, err = nil, panicked(log, info.FullMethod, p)
			}
		}()
		return handler(ctx, req)
	}
}

// RecoverStream recovers a panicking stream handler; the stream ends with
// codes.Internal (kubelet then drops the endpoint, and the registrar
// registers again).
func RecoverStream(log *slog.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
		defer func() {
			if p := recover(); p != nil {
				err = panicked(log, info.FullMethod, p)
			}
		}()
		return handler(srv, ss)
	}
}

// panicked logs a recovered panic and returns the call's error.
func panicked(log *slog.Logger, method string, p any) error {
	log.Error("gRPC handler panicked (a bug); the call fails with Internal, the plugin goes on",
		"method", method, "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
	return status.Errorf(codes.Internal, "accel-plugin: internal error in %s: %v", method, p)
}
