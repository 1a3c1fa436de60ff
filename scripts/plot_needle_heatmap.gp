# Needle retrieval accuracy heat maps (depth x length), one panel per policy.
# Called by `defkv eval sweep` as:
#   gnuplot -e "in='needle_<schedule>_<budget>pct.dat'; out='....png'; names='full p1 ...'; ttl='...'; dx=256" plot_needle_heatmap.gp
# Data: one block per policy (two blank lines between blocks, order of
# `names`), rows: length depth_bin_center accuracy correct total, on a regular
# grid (lengths equally spaced, depth bins of equal width).
if (!exists("in") || !exists("out")) { print "plot_needle_heatmap.gp: set in= and out="; exit }
if (!exists("names")) names = ""
if (!exists("ttl")) ttl = "needle accuracy"
if (!exists("dx")) dx = 256  # spacing of the prompt lengths
n = words(names)
cols = (n > 4) ? 4 : n
rows = int((n + cols - 1) / cols)
set terminal pngcairo size (330*cols),(300*rows+40) enhanced font "sans,9"
set output out
set datafile missing "NaN"
set multiplot layout rows,cols title ttl
set palette defined (0 "#b2182b", 0.5 "#f7f7f7", 1 "#2166ac")
set cbrange [0:1]
set xlabel "prompt length (tokens)"
set ylabel "needle depth"
set yrange [0:1]
set ytics 0,0.2,1
unset key
do for [i=1:n] {
  set autoscale x
  set autoscale y
  stats in index (i-1) using 1 nooutput
  xmin = STATS_min; xmax = STATS_max
  set xrange [xmin - dx/2 : xmax + dx/2]
  set xtics xmin, dx, xmax
  set yrange [0:1]
  set title word(names, i)
  if (i < n) { unset colorbox } else { set colorbox }
  plot in index (i-1) using 1:2:3 with image, \
       in index (i-1) using 1:2:(sprintf("%d/%d", $4, $5)) with labels font "sans,8"
}
unset multiplot
