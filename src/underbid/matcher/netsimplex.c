/*
 * Primal network simplex for the clearing's min-cost flows (see netsimplex.py).
 *
 * Why not only OR-Tools: its cost scaling runs a refine phase per factor of its scaling in the
 * cost range, whatever the graph's size.  On a clearing graph of ~30 nodes and ~130 arcs with
 * costs of ~1e14 (durations in seconds x prices in 6-decimal base units x the unit weight)
 * those phases are ~90% of its time; the same graphs with zero costs solve 8x faster.  The
 * simplex below does not depend on the cost range (only on the number of pivots), so on those
 * small graphs it is ~3x faster, and at ~7,000 arcs about as fast.
 *
 * The algorithm and its spanning-tree structure (parent, predecessor arc and its direction,
 * preorder thread, subtree size and last successor; block-search pricing; the strongly
 * feasible leaving-arc rule, which rules out cycling) are those of LEMON's NetworkSimplex
 * (P. Kovacs, "Minimum-cost flow algorithms: an experimental evaluation", 2015), written here
 * for a single source and sink.
 *
 * Exactness: costs are int64, potentials and reduced costs are __int128.  With n < 2^24 nodes
 * and |cost| < 2^63: a forbidden arc's penalty is < 2^88, the artificial cost < 2^113, a
 * potential (one artificial arc and at most n real ones on its tree path from the root) < 2^114
 * and a reduced cost < 2^116, so no sum overflows.  Flows stay within [0, cap] by construction.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef __int128 i128;

/* Size limits: with them every potential and reduced cost stays far inside __int128 (below). */
#define NS_MAX_NODES (1 << 24)
#define NS_MAX_ARCS (1 << 30)

enum { NS_OPTIMAL = 0, NS_INFEASIBLE = 1, NS_BAD_INPUT = 2, NS_GAVE_UP = 3, NS_NO_MEMORY = 4 };
enum { TREE = 0, LOWER = 1, UPPER = -1 };  /* an arc's state; LOWER/UPPER also sign its reduced cost */
enum { DIR_UP = 1, DIR_DOWN = -1 };        /* a tree arc points to its node's parent, or from it */

typedef struct {
    int32_t n_arcs, n_all, root;           /* real arcs; nodes with the root; the artificial root */
    int32_t *src, *dst;                    /* arc ends, real arcs then one artificial arc per node */
    int64_t *cap, *flow;
    i128 *cost, *pi;
    int8_t *state, *pred_dir;
    int32_t *parent, *pred, *thread, *rev_thread, *succ_num, *last_succ, *dirty;
} tree_t;

static void free_tree(tree_t *t) {
    free(t->src); free(t->dst); free(t->cap); free(t->flow); free(t->cost); free(t->pi); free(t->state);
    free(t->pred_dir); free(t->parent); free(t->pred); free(t->thread); free(t->rev_thread);
    free(t->succ_num); free(t->last_succ); free(t->dirty);
}

/* The preorder thread (cyclic through the root), subtree sizes, last successors and potentials
   of the tree given by parent, pred and pred_dir.  Returns -1 if it does not span every node. */
static int index_tree(tree_t *t) {
    int32_t n = t->n_all;
    int32_t *start = calloc((size_t)n + 1, sizeof *start);
    int32_t *kids = malloc(sizeof *kids * (size_t)n);
    int32_t *stack = malloc(sizeof *stack * (size_t)n);
    int32_t *order = malloc(sizeof *order * (size_t)n);
    int ok = start && kids && stack && order;
    if (ok) {
        for (int32_t v = 0; v < n; v++) if (v != t->root) start[t->parent[v] + 1]++;
        for (int32_t v = 0; v < n; v++) start[v + 1] += start[v];
        memcpy(stack, start, sizeof *stack * (size_t)n);  /* fill positions */
        for (int32_t v = 0; v < n; v++) if (v != t->root) kids[stack[t->parent[v]]++] = v;
        int32_t top = 0, count = 0;
        stack[top++] = t->root;
        t->pi[t->root] = 0;
        while (top) {
            int32_t v = stack[--top];
            order[count++] = v;
            t->succ_num[v] = 1;
            t->last_succ[v] = v;
            if (v != t->root) {
                int32_t p = t->parent[v], a = t->pred[v];
                t->pi[v] = t->pred_dir[v] == DIR_UP ? t->pi[p] - t->cost[a] : t->pi[p] + t->cost[a];
            }
            for (int32_t k = start[v + 1] - 1; k >= start[v]; k--) stack[top++] = kids[k];
        }
        ok = count == n;
        for (int32_t k = 0; ok && k < count; k++) {
            int32_t v = order[k], next = order[(k + 1) % count];
            t->thread[v] = next;
            t->rev_thread[next] = v;
        }
        /* Children after their parent in preorder: walking it backwards, a node's subtree is done
           before its parent, and the first child met last in preorder gives the last successor. */
        for (int32_t k = count - 1; ok && k > 0; k--) {
            int32_t v = order[k], p = t->parent[v];
            if (t->last_succ[p] == p) t->last_succ[p] = t->last_succ[v];
            t->succ_num[p] += t->succ_num[v];
        }
    }
    free(start); free(kids); free(stack); free(order);
    return ok ? 0 : -1;
}

/* Re-hang the subtree of u_out from v_in by the entering arc: the stem u_in .. u_out reverses.
   Returns the number of nodes whose potential moved (the work that can grow with the tree). */
static int64_t update_tree(tree_t *t, int32_t in_arc, int32_t join, int32_t u_in, int32_t v_in, int32_t u_out) {
    int32_t *parent = t->parent, *pred = t->pred, *thread = t->thread, *rev_thread = t->rev_thread;
    int32_t *succ_num = t->succ_num, *last_succ = t->last_succ;
    int8_t *pred_dir = t->pred_dir;
    int32_t old_rev_thread = rev_thread[u_out], old_succ_num = succ_num[u_out];
    int32_t old_last_succ = last_succ[u_out], v_out = parent[u_out];
    int32_t last = last_succ[u_in], right = thread[last];
    /* when v_in precedes u_out in the thread, join and v_out coincide */
    int32_t after_stem = old_rev_thread == v_in ? thread[last_succ[u_out]] : thread[v_in];
    int32_t stem = u_in, par_stem = v_in, n_dirty = 0;
    thread[v_in] = u_in;
    t->dirty[n_dirty++] = v_in;
    while (stem != u_out) {
        int32_t next_stem = parent[stem];
        thread[last] = next_stem;  /* the next stem node follows this one's subtree */
        t->dirty[n_dirty++] = last;
        int32_t before = rev_thread[stem];  /* take this stem node's subtree out of the thread */
        thread[before] = right;
        rev_thread[right] = before;
        parent[stem] = par_stem;
        par_stem = stem;
        stem = next_stem;
        last = last_succ[stem] == last_succ[par_stem] ? rev_thread[par_stem] : last_succ[stem];
        right = thread[last];
    }
    parent[u_out] = par_stem;
    thread[last] = after_stem;
    rev_thread[after_stem] = last;
    last_succ[u_out] = last;
    if (old_rev_thread != v_in) {
        thread[old_rev_thread] = right;
        rev_thread[right] = old_rev_thread;
    }
    for (int32_t k = 0; k < n_dirty; k++) rev_thread[thread[t->dirty[k]]] = t->dirty[k];
    int32_t moved = 0, tail_last = last_succ[u_out];
    for (int32_t w = u_out; w != u_in;) {  /* the stem's tree arcs, subtree sizes, last successors */
        int32_t p = parent[w];
        pred[w] = pred[p];
        pred_dir[w] = (int8_t)-pred_dir[p];
        moved += succ_num[w] - succ_num[p];
        succ_num[w] = moved;
        last_succ[p] = tail_last;
        w = p;
    }
    pred[u_in] = in_arc;
    pred_dir[u_in] = u_in == t->src[in_arc] ? DIR_UP : DIR_DOWN;
    succ_num[u_in] = old_succ_num;
    int32_t up_limit_in = -1, up_limit_out = -1;
    if (last_succ[join] == v_in) up_limit_out = join;
    else up_limit_in = join;
    for (int32_t w = v_in; w != up_limit_in && last_succ[w] == v_in; w = parent[w]) last_succ[w] = last_succ[u_out];
    int32_t new_last = (join != old_rev_thread && v_in != old_rev_thread) ? old_rev_thread : last_succ[u_out];
    for (int32_t w = v_out; w != up_limit_out && last_succ[w] == old_last_succ; w = parent[w]) last_succ[w] = new_last;
    for (int32_t w = v_in; w != join; w = parent[w]) succ_num[w] += old_succ_num;
    for (int32_t w = v_out; w != join; w = parent[w]) succ_num[w] -= old_succ_num;
    /* the moved subtree's potentials shift by one constant */
    i128 sigma = pred_dir[u_in] == DIR_UP ? t->pi[v_in] - t->pi[u_in] - t->cost[in_arc]
                                          : t->pi[v_in] - t->pi[u_in] + t->cost[in_arc];
    int32_t end = thread[last_succ[u_in]];
    int64_t moved_nodes = 0;
    for (int32_t w = u_in; w != end; w = thread[w], moved_nodes++) t->pi[w] += sigma;
    return moved_nodes;
}

/* A graph being solved: the tree, the caller's costs and what pivoting resumes from. */
typedef struct {
    tree_t t;
    int32_t n_nodes, block, next_arc;
    int32_t *search;     /* the order pricing visits the real arcs in (a fixed shuffle) */
    int64_t *base_cost;  /* the caller's costs, before any penalty */
    i128 penalty;        /* added to a forbidden arc's cost (ns_reprice) */
} ns_graph;

void ns_free(ns_graph *g) {
    if (!g) return;
    free_tree(&g->t);
    free(g->search);
    free(g->base_cost);
    free(g);
}

/*
 * A graph for a min-cost flow of `supply` units from `source` to `sink` over arcs
 * (tails[a] -> heads[a], capacity caps[a] >= 0, cost costs[a]); no other node has supply.
 * NULL with *status NS_BAD_INPUT for an arc out of range, a loop, a negative capacity or more
 * than NS_MAX_NODES nodes or NS_MAX_ARCS arcs, or
 * NS_NO_MEMORY.
 *
 * Start: when some arc source -> sink can carry the whole supply (the clearing's bypass), the
 * supply starts on it and every node with an arc into the sink hangs from the sink on that arc,
 * so that pivots move real flow from the start; otherwise LEMON's artificial start.
 */
ns_graph *ns_new(int32_t n_nodes, int32_t n_arcs, const int32_t *tails, const int32_t *heads,
                 const int64_t *caps, const int64_t *costs, int32_t source, int32_t sink, int64_t supply,
                 int *status) {
    *status = NS_BAD_INPUT;
    if (n_nodes <= 0 || n_nodes > NS_MAX_NODES || n_arcs < 0 || n_arcs > NS_MAX_ARCS ||
        source < 0 || source >= n_nodes || sink < 0 || sink >= n_nodes || source == sink || supply < 0)
        return NULL;
    i128 max_cost = 0;
    for (int32_t a = 0; a < n_arcs; a++) {
        if (tails[a] < 0 || tails[a] >= n_nodes || heads[a] < 0 || heads[a] >= n_nodes ||
            tails[a] == heads[a] || caps[a] < 0)
            return NULL;
        i128 c = costs[a] < 0 ? -(i128)costs[a] : (i128)costs[a];
        if (c > max_cost) max_cost = c;
    }
    *status = NS_NO_MEMORY;
    ns_graph *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    tree_t *t = &g->t;
    g->n_nodes = n_nodes;
    t->n_arcs = n_arcs;
    t->root = n_nodes;
    t->n_all = n_nodes + 1;
    const int32_t n_all_arcs = n_arcs + n_nodes;
    const size_t arcs_sz = (size_t)n_all_arcs, nodes_sz = (size_t)t->n_all;
    /* A forbidden arc costs more than any cycle of other real arcs can gain, and the artificial
       arcs more than any path, penalties included: the flow leaves both whenever it can. */
    g->penalty = (max_cost + 1) * (i128)(t->n_all + 1);
    const i128 art_cost = (max_cost + 1 + g->penalty) * (i128)(t->n_all + 1);
    g->base_cost = malloc(sizeof *g->base_cost * (arcs_sz ? arcs_sz : 1));
    g->search = malloc(sizeof *g->search * (arcs_sz ? arcs_sz : 1));
    t->src = malloc(sizeof *t->src * arcs_sz);
    t->dst = malloc(sizeof *t->dst * arcs_sz);
    t->cap = malloc(sizeof *t->cap * arcs_sz);
    t->flow = malloc(sizeof *t->flow * arcs_sz);
    t->cost = malloc(sizeof *t->cost * arcs_sz);
    t->state = malloc(arcs_sz);
    t->pi = malloc(sizeof *t->pi * nodes_sz);
    t->pred_dir = malloc(nodes_sz);
    t->parent = malloc(sizeof *t->parent * nodes_sz);
    t->pred = malloc(sizeof *t->pred * nodes_sz);
    t->thread = malloc(sizeof *t->thread * nodes_sz);
    t->rev_thread = malloc(sizeof *t->rev_thread * nodes_sz);
    t->succ_num = malloc(sizeof *t->succ_num * nodes_sz);
    t->last_succ = malloc(sizeof *t->last_succ * nodes_sz);
    t->dirty = malloc(sizeof *t->dirty * nodes_sz);
    if (!g->base_cost || !g->search || !t->src || !t->dst || !t->cap || !t->flow || !t->cost || !t->state || !t->pi ||
        !t->pred_dir || !t->parent || !t->pred || !t->thread || !t->rev_thread || !t->succ_num ||
        !t->last_succ || !t->dirty) {
        ns_free(g);
        return NULL;
    }
    for (int32_t a = 0; a < n_arcs; a++) {
        t->src[a] = tails[a];
        t->dst[a] = heads[a];
        t->cap[a] = caps[a];
        t->cost[a] = costs[a];
        g->base_cost[a] = costs[a];
        t->flow[a] = 0;
        t->state[a] = LOWER;
    }
    t->parent[t->root] = -1;
    t->pred[t->root] = -1;
    t->pred_dir[t->root] = DIR_UP;
    int32_t bypass = -1;
    for (int32_t a = 0; a < n_arcs && supply > 0; a++) {
        if (tails[a] == source && heads[a] == sink && caps[a] >= supply) { bypass = a; break; }
    }
    for (int32_t v = 0; v < n_nodes; v++) {  /* every node on its artificial arc to or from the root */
        int32_t a = n_arcs + v;
        int64_t b = bypass >= 0 ? 0 : v == source ? supply : v == sink ? -supply : 0;
        t->parent[v] = t->root;
        t->pred[v] = a;
        t->cap[a] = INT64_MAX;
        t->state[a] = TREE;
        if (b >= 0) {
            t->src[a] = v; t->dst[a] = t->root; t->flow[a] = b; t->cost[a] = 0; t->pred_dir[v] = DIR_UP;
        } else {
            t->src[a] = t->root; t->dst[a] = v; t->flow[a] = -b; t->cost[a] = art_cost; t->pred_dir[v] = DIR_DOWN;
        }
    }
    if (bypass >= 0) {
        /* Strongly feasible: the bypass points away from the root and carries flow; the arcs into
           the sink point to the root, empty.  No flow can pass the root: no arc leaves it. */
        t->flow[bypass] = supply;
        t->state[bypass] = TREE;
        t->state[n_arcs + sink] = LOWER;
        t->parent[sink] = source; t->pred[sink] = bypass; t->pred_dir[sink] = DIR_DOWN;
        for (int32_t a = 0; a < n_arcs; a++) {
            int32_t v = tails[a];
            if (heads[a] != sink || v == source || caps[a] == 0 || t->parent[v] != t->root) continue;
            t->state[n_arcs + v] = LOWER;
            t->state[a] = TREE;
            t->parent[v] = sink; t->pred[v] = a; t->pred_dir[v] = DIR_UP;
        }
    }
    if (index_tree(t) != 0) {
        ns_free(g);
        return NULL;
    }
    g->block = 10;  /* block search: about sqrt(arcs) arcs a block */
    while ((int64_t)g->block * g->block < n_arcs) g->block++;
    /* Pricing visits the arcs in a fixed pseudo-random order (Fisher-Yates on splitmix64 with a
       constant seed, so every run pivots alike).  A clearing graph lists each class's arcs
       together, so a block in the given order holds one class's arcs only; shuffled, it samples
       the whole graph: 3x fewer pivots on the 10k x 100k graphs. */
    uint64_t seed = 0x9E3779B97F4A7C15u;
    for (int32_t a = 0; a < n_arcs; a++) g->search[a] = a;
    for (int32_t a = n_arcs - 1; a > 0; a--) {
        uint64_t z = (seed += 0x9E3779B97F4A7C15u);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
        z ^= z >> 31;
        int32_t pick = (int32_t)(z % (uint64_t)(a + 1)), kept = g->search[a];
        g->search[a] = g->search[pick];
        g->search[pick] = kept;
    }
    *status = NS_OPTIMAL;
    return g;
}

/* Pivots to an optimum: NS_OPTIMAL, NS_INFEASIBLE (some supply stays on an artificial arc), or
   NS_GAVE_UP after max_pivots pivots or once the work (arcs priced plus potentials moved) passes
   NS_WORK_PER_ELEMENT x (nodes + arcs) x the block size: a pivot can price every arc, so the
   pivot bound alone does not bound the time.  (Measured: at most ~1x on every benchmark graph.)
   After NS_GAVE_UP the flow is feasible but maybe not optimal. */
#define NS_WORK_PER_ELEMENT 10
int ns_run(ns_graph *g, int64_t max_pivots) {
    tree_t *t = &g->t;
    const int32_t n_arcs = t->n_arcs;
    const int64_t max_work = NS_WORK_PER_ELEMENT * ((int64_t)g->n_nodes + n_arcs) * g->block + 100000;
    int64_t work = 0;
    for (int64_t pivots = 0;; pivots++) {
        if (pivots > max_pivots || work > max_work) return NS_GAVE_UP;
        /* Entering arc: the most negative reduced cost in the first block that has one. */
        int32_t in_arc = -1, at = g->next_arc, count = g->block;
        i128 best = 0;
        for (int32_t seen = 0; seen < n_arcs; seen++, work++) {
            int32_t e = g->search[at];
            if (t->state[e] != TREE) {
                i128 reduced = t->cost[e] + t->pi[t->src[e]] - t->pi[t->dst[e]];
                if (t->state[e] == UPPER) reduced = -reduced;
                if (reduced < best) { best = reduced; in_arc = e; }
            }
            if (++at == n_arcs) at = 0;
            if (--count == 0) {
                if (in_arc >= 0) break;
                count = g->block;
            }
        }
        if (in_arc < 0) break;  /* no arc has a negative reduced cost: optimal */
        g->next_arc = at;
        int32_t u = t->src[in_arc], v = t->dst[in_arc];
        while (u != v) {  /* the join: the cycle's apex */
            if (t->succ_num[u] < t->succ_num[v]) u = t->parent[u];
            else v = t->parent[v];
        }
        int32_t join = u;
        /* Leaving arc: the first blocking arc from `first` up, else the last from `second` up
           (this keeps the tree strongly feasible). */
        int32_t first = t->state[in_arc] == LOWER ? t->src[in_arc] : t->dst[in_arc];
        int32_t second = t->state[in_arc] == LOWER ? t->dst[in_arc] : t->src[in_arc];
        int64_t delta = t->cap[in_arc];
        int side = 0;
        int32_t u_out = -1;
        for (int32_t w = first; w != join; w = t->parent[w]) {
            int32_t a = t->pred[w];
            int64_t room = t->pred_dir[w] == DIR_DOWN ? t->cap[a] - t->flow[a] : t->flow[a];
            if (room < delta) { delta = room; u_out = w; side = 1; }
        }
        for (int32_t w = second; w != join; w = t->parent[w]) {
            int32_t a = t->pred[w];
            int64_t room = t->pred_dir[w] == DIR_UP ? t->cap[a] - t->flow[a] : t->flow[a];
            if (room <= delta) { delta = room; u_out = w; side = 2; }
        }
        if (delta > 0) {
            int64_t step = t->state[in_arc] * delta;
            t->flow[in_arc] += step;
            for (int32_t w = t->src[in_arc]; w != join; w = t->parent[w]) t->flow[t->pred[w]] -= t->pred_dir[w] * step;
            for (int32_t w = t->dst[in_arc]; w != join; w = t->parent[w]) t->flow[t->pred[w]] += t->pred_dir[w] * step;
        }
        if (side == 0) {  /* the entering arc itself blocks: it moves to its other bound */
            t->state[in_arc] = (int8_t)-t->state[in_arc];
            continue;
        }
        t->state[in_arc] = TREE;
        t->state[t->pred[u_out]] = t->flow[t->pred[u_out]] == 0 ? LOWER : UPPER;
        int32_t u_in = side == 1 ? first : second, v_in = side == 1 ? second : first;
        work += update_tree(t, in_arc, join, u_in, v_in, u_out);
    }
    for (int32_t v = 0; v < g->n_nodes; v++) {
        if (t->flow[n_arcs + v] != 0) return NS_INFEASIBLE;
    }
    return NS_OPTIMAL;
}

/* The current flow of the real arcs. */
void ns_flows(const ns_graph *g, int64_t *flows) {
    memcpy(flows, g->t.flow, sizeof *flows * (size_t)g->t.n_arcs);
}

/* Back to the caller's costs, plus the penalty on each arc with forbidden[a] != 0; the current
   flow and tree stay, so the next ns_run starts from there (a warm start).  An optimum of the
   repriced graph carries no flow on a forbidden arc when some feasible flow carries none. */
int ns_reprice(ns_graph *g, const uint8_t *forbidden) {
    tree_t *t = &g->t;
    for (int32_t a = 0; a < t->n_arcs; a++) t->cost[a] = g->base_cost[a] + (forbidden[a] ? g->penalty : 0);
    return index_tree(t) == 0 ? NS_OPTIMAL : NS_NO_MEMORY;
}

/* ns_new, ns_run and ns_flows in one call (flows written only on NS_OPTIMAL). */
int ns_min_cost_flow(int32_t n_nodes, int32_t n_arcs, const int32_t *tails, const int32_t *heads,
                     const int64_t *caps, const int64_t *costs, int32_t source, int32_t sink,
                     int64_t supply, int64_t max_pivots, int64_t *flows) {
    int status;
    ns_graph *g = ns_new(n_nodes, n_arcs, tails, heads, caps, costs, source, sink, supply, &status);
    if (!g) return status;
    status = ns_run(g, max_pivots);
    if (status == NS_OPTIMAL) ns_flows(g, flows);
    ns_free(g);
    return status;
}

/* ns_min_cost_flow for `count` graphs in one call (the clearing's batch of small markets):
   graph m has node_counts[m] nodes and arcs arc_starts[m] .. arc_starts[m + 1] - 1 of the
   arrays, numbered within the graph, the same source and sink, supplies[m] units and at most
   pivots_per_element * (its nodes + arcs) + 1000 pivots; statuses[m] is its status. */
void ns_min_cost_flow_many(int32_t count, const int32_t *node_counts, const int64_t *arc_starts,
                           const int32_t *tails, const int32_t *heads, const int64_t *caps, const int64_t *costs,
                           int32_t source, int32_t sink, const int64_t *supplies, int64_t pivots_per_element,
                           int64_t *flows, int32_t *statuses) {
    for (int32_t m = 0; m < count; m++) {
        int64_t lo = arc_starts[m], hi = arc_starts[m + 1];
        if (lo < 0 || hi < lo || hi - lo > INT32_MAX) { statuses[m] = NS_BAD_INPUT; continue; }
        int32_t n_arcs = (int32_t)(hi - lo);
        int64_t max_pivots = pivots_per_element * ((int64_t)node_counts[m] + n_arcs) + 1000;
        statuses[m] = ns_min_cost_flow(node_counts[m], n_arcs, tails + lo, heads + lo, caps + lo, costs + lo, source,
                                       sink, supplies[m], max_pivots, flows + lo);
    }
}
