# SPDX-License-Identifier: MIT
# The Wilcoxon rank-sum (Mann-Whitney U) test, exact, for compare.sh: does one server's
# figure differ from the other's by more than the spread of the repetitions explains?
#
# ranksum_p(x, nx, y, ny) is the two-sided p-value of the hypothesis that x[1..nx] and
# y[1..ny] come from one distribution. Exact: every way of splitting the pooled values into
# groups of nx and ny is counted (a dynamic programme over rank sums, not a normal
# approximation, which is wrong for 5 against 5); tied values take their mean rank and the
# count is over those ranks, the test conditional on the ties. Ranks are doubled so that
# mean ranks stay integers. The p-value is the share of splits whose rank sum lies at least
# as far from its mean as the observed one. With 5 repetitions a side the smallest p is
# 2/252 = 0.0079; with 3 it is 0.1, so 3 repetitions never show a difference at 0.05.
# Returns -1 when a side is empty. Counts are doubles: exact up to 2^53, C(44, 22) < 2^41.
#
# ranksum_min_p(n) is the smallest p-value n values a side can give: 2 / C(2n, n), the two
# most extreme of every split; below 0.05 from n = 4 on.
#
# ranksum_verdict(p, a, b, more, less) is the words compare.md and scaling.md print for a
# p-value p and the two medians a (keel) and b (epoll): "keel MORE (p ...)" or "keel LESS
# (p ...)" at p < 0.05 (MORE when a > b), "not shown (p ...)" above, "-" without a test.
# Two equal medians with p < 0.05 say "shown, medians equal (p ...)": the test saw a
# difference the medians cannot give a direction to (it took the tie for "less").
#
# ranksum_shown(prate, krate, erate, pcpu, kcpu, ecpu) is a row's two verdicts in one cell.
#
# signrank_p(d, n) is the two-sided p-value of the exact Wilcoxon signed-rank test that the
# paired differences d[1..n] are spread evenly around 0 (compare.sh gives it the logarithms
# of the per-pair keel/epoll ratios: a pair is two runs back to back, so the machine's
# state, which moves both servers' figures together, drops out of their ratio). Zero
# differences are left out; tied magnitudes take their mean rank (doubled, as above), and
# magnitudes are compared to 12 significant digits, so that log(a/b) and -log(b/a), which
# doubles rarely make equal, are a tie. Every
# one of the 2^m sign patterns of the m nonzero differences is counted, and the p-value is
# the share whose positive rank sum lies at least as far from its mean as the observed one.
# The smallest p of n pairs, signrank_min_p(n), is 2 / 2^n: 0.0625 with 5, 0.031 with 6,
# 0.016 with 7, so it takes 6 pairs to reach p < 0.05. Returns -1 with no nonzero difference.
#
# Used with -f beside a program: awk -f tools/bench/ranksum.awk -f prog.awk.

function ranksum__sort(v, n, g,   i, j, t, u) {
	for (i = 2; i <= n; i++)
		for (j = i; j > 1 && v[j - 1] > v[j]; j--) {
			t = v[j]; v[j] = v[j - 1]; v[j - 1] = t
			u = g[j]; g[j] = g[j - 1]; g[j - 1] = u
		}
}

# Doubled mean ranks of the sorted v[1..n] into r2: a run of ties from i to j (1-based)
# takes i + j, so mean ranks stay integers.
function ranksum__ranks(v, n, r2,   i, j, k) {
	for (i = 1; i <= n; i = j + 1) {
		for (j = i; j < n && v[j + 1] == v[i]; j++)
			;
		for (k = i; k <= j; k++)
			r2[k] = i + j
	}
}

function ranksum_p(x, nx, y, ny,   v, g, r2, n, i, k, s, t, obs, mean2, far, tot, hit, cnt, maxs) {
	if (nx < 1 || ny < 1)
		return -1
	n = 0
	for (i = 1; i <= nx; i++) { v[++n] = x[i] + 0; g[n] = 1 }
	for (i = 1; i <= ny; i++) { v[++n] = y[i] + 0; g[n] = 0 }
	ranksum__sort(v, n, g)
	ranksum__ranks(v, n, r2)
	obs = 0
	for (i = 1; i <= n; i++)
		if (g[i])
			obs += r2[i]
	mean2 = nx * (n + 1)
	far = obs - mean2; if (far < 0) far = -far
	# cnt[k, s]: subsets of k of the ranks seen so far whose doubled ranks sum to s
	cnt[0, 0] = 1; maxs = 0
	for (i = 1; i <= n; i++) {
		maxs += r2[i]
		for (k = (i < nx ? i : nx); k >= 1; k--)
			for (s = maxs; s >= r2[i]; s--)
				if (((k - 1, s - r2[i]) in cnt))
					cnt[k, s] += cnt[k - 1, s - r2[i]]
	}
	tot = hit = 0
	for (s = 0; s <= maxs; s++)
		if (((nx, s) in cnt)) {
			tot += cnt[nx, s]
			t = s - mean2; if (t < 0) t = -t
			# doubled ranks are integers: no rounding in the comparison
			if (t >= far)
				hit += cnt[nx, s]
		}
	return tot > 0 ? hit / tot : -1
}

function signrank_p(d, n,   v, g, r2, m, i, s, obs, tot2, far, t, cnt, maxs, tot, hit) {
	# the nonzero magnitudes, each with its sign (g: positive), sorted by magnitude
	m = 0
	for (i = 1; i <= n; i++)
		if (d[i] + 0 != 0) {
			v[++m] = sprintf("%.12g", d[i] < 0 ? -d[i] : d[i] + 0) + 0
			g[m] = d[i] > 0
		}
	if (m < 1)
		return -1
	ranksum__sort(v, m, g)
	ranksum__ranks(v, m, r2)
	obs = tot2 = 0
	for (i = 1; i <= m; i++) {
		tot2 += r2[i]
		if (g[i])
			obs += r2[i]
	}
	# twice the distance from the mean (tot2 / 2): integers throughout
	far = 2 * obs - tot2; if (far < 0) far = -far
	# cnt[s]: sign patterns of the ranks seen so far whose positive doubled ranks sum to s
	cnt[0] = 1; maxs = 0
	for (i = 1; i <= m; i++) {
		maxs += r2[i]
		for (s = maxs; s >= r2[i]; s--)
			if (((s - r2[i]) in cnt))
				cnt[s] += cnt[s - r2[i]]
	}
	tot = hit = 0
	for (s = 0; s <= maxs; s++)
		if ((s in cnt)) {
			tot += cnt[s]
			t = 2 * s - tot2; if (t < 0) t = -t
			if (t >= far)
				hit += cnt[s]
		}
	return tot > 0 ? hit / tot : -1
}

function signrank_min_p(n) {
	return 2 / 2 ^ n
}

function ranksum_min_p(n,   c, i) {
	c = 1
	for (i = 1; i <= n; i++)
		c = c * (n + i) / i
	return 2 / c
}

function ranksum_verdict(p, a, b, more, less) {
	if (p == "" || p == "-" || p < 0 || a == "" || b == "" || a == "null" || b == "null")
		return "-"
	if (p + 0 >= 0.05)
		return sprintf("not shown (p %.2f)", p)
	if (a + 0 == b + 0)
		return sprintf("shown, medians equal (p %.3f)", p)
	return sprintf("keel %s (p %.3f)", (a + 0 > b + 0) ? more : less, p)
}

# The "shown (p): rate; server CPU" cell of a row: the rate's verdict (keel ahead/behind)
# and the server CPU's (keel dearer/cheaper), "-" when neither has a test.
function ranksum_shown(prate, krate, erate, pcpu, kcpu, ecpu,   sh) {
	sh = ranksum_verdict(prate, krate, erate, "ahead", "behind") "; " \
		ranksum_verdict(pcpu, kcpu, ecpu, "dearer", "cheaper")
	return sh == "-; -" ? "-" : sh
}
