package plugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Handler serves /metrics, /healthz and /readyz.
//
// /healthz answers 200 while the plugin runs (the process is not wedged:
// the handler runs on the same runtime). /readyz answers 200 once
// discovery has reported, every resource is registered with kubelet and
// every device daemon answers (a frozen or dead daemon is named, with the
// reason), and 503 with the reasons otherwise.
func (p *Plugin) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(p.Metrics.Registry, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if reasons := p.notReady(); len(reasons) > 0 {
			http.Error(w, "not ready: "+strings.Join(reasons, "; "), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// notReady lists why the plugin is not ready (none: ready).
func (p *Plugin) notReady() []string {
	var reasons []string
	if p.Store.Sources() < len(p.sources) {
		reasons = append(reasons, "discovery has not reported yet")
	}
	for _, s := range p.sources {
		if r, ok := s.(interface{ notReady() string }); ok {
			if why := r.notReady(); why != "" {
				reasons = append(reasons, why)
			}
		}
	}
	if why := p.frontend.NotReady(); why != "" {
		reasons = append(reasons, why)
	}
	return reasons
}

// serveHTTP serves Handler on addr until ctx ends.
func (p *Plugin) serveHTTP(ctx context.Context, l net.Listener) error {
	srv := &http.Server{Handler: p.Handler(), ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	select {
	case err := <-done:
		return fmt.Errorf("metrics server: %w", err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("metrics server: %w", err)
		}
		return nil
	}
}
