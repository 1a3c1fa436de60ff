# Quality loss vs KV budget, one line per policy.
# Called by `defkv eval sweep` as:
#   gnuplot -e "in='quality_<schedule>.dat'; out='....png'; names='p1 p2 ...'; ttl='...'" plot_quality.gp
# Data: one block per policy (separated by two blank lines, in the order of
# `names`), columns: budget_percent mean_kl p99_kl top1.
if (!exists("in") || !exists("out")) { print "plot_quality.gp: set in= and out="; exit }
if (!exists("names")) names = ""
if (!exists("ttl")) ttl = "quality loss vs KV budget"
set terminal pngcairo size 1100,480 enhanced font "sans,10"
set output out
set datafile missing "nan"
set multiplot layout 1,2 title ttl
set key top right
set grid
set logscale y
set xlabel "KV budget (% of the prefix kept)"
set ylabel "mean KL(full || policy) [nats]"
set format y "10^{%T}"
set title "mean per-token KL (lower is better)"
plot for [i=1:words(names)] in index (i-1) using 1:2 with linespoints lw 2 pt (i+3) title word(names, i)
unset logscale y
unset format y
set format y "%g"
set ylabel "top-1 agreement with the full cache [%]"
set key bottom right
set title "top-1 agreement (higher is better)"
plot for [i=1:words(names)] in index (i-1) using 1:($4*100) with linespoints lw 2 pt (i+3) title word(names, i)
unset multiplot
