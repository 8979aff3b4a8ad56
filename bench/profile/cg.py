import sys, re, collections
path=sys.argv[1]; top=int(sys.argv[2]) if len(sys.argv)>2 else 40
names={}; selfc=collections.Counter(); callc=collections.Counter()
cur=None; in_call=False; cfn=None
def name(tok):
    m=re.match(r'\((\d+)\)(?: (.*))?',tok)
    if m:
        i,n=m.groups()
        if n: names[i]=n
        return names.get(i,i)
    return tok
total=0
for line in open(path, errors='replace'):
    line=line.rstrip('\n')
    if line.startswith('fn='):
        cur=name(line[3:]); continue
    if line.startswith('cfn='):
        cfn=name(line[4:]); continue
    if line.startswith('calls='):
        in_call=True; continue
    if line and (line[0].isdigit() or line[0] in '+-*'):
        parts=line.split()
        if len(parts)<2: continue
        c=int(parts[1])
        if in_call:
            callc[(cur,cfn)]+=c; in_call=False
        else:
            selfc[cur]+=c; total+=c
        continue
    if line.startswith(('cfi=','cfl=','fi=','fe=','fl=','ob=','cob=')):
        if line.startswith(('fi=','fe=','fl=')): pass
        continue
incl=collections.Counter(selfc)
for (f,g),c in callc.items():
    if f!=g: incl[f]+=c
mode=sys.argv[3] if len(sys.argv)>3 else 'self'
print('total', total)
src = selfc if mode=='self' else incl
for f,c in src.most_common(top):
    print(f'{c:>14,} {100*c/total:6.2f}%  {f[:170]}')
if mode=='callees':
    # python3 cg.py FILE TOP callees SUBSTRING: what functions matching SUBSTRING call, inclusive
    pat=sys.argv[4]
    cc=collections.Counter()
    for (f,g),c in callc.items():
        if pat in f and f!=g: cc[g]+=c
    print('callees of', pat)
    for g,c in cc.most_common(top):
        print(f'{c:>14,} {100*c/total:6.2f}%  {g[:170]}')
if mode=='callers':
    # python3 cg.py FILE TOP callers SUBSTRING: who calls functions matching SUBSTRING, inclusive cost of those calls
    pat=sys.argv[4]
    cc=collections.Counter()
    for (f,g),c in callc.items():
        if pat in g and f!=g: cc[f]+=c
    print('callers of', pat)
    for f,c in cc.most_common(top):
        print(f'{c:>14,} {100*c/total:6.2f}%  {f[:170]}')
