import re, collections
def load(path):
    names={}; selfc=collections.Counter(); callc=collections.Counter()
    cur=None; in_call=False; cfn=None; total=0
    def name(tok):
        m=re.match(r'\((\d+)\)(?: (.*))?',tok)
        if m:
            i,n=m.groups()
            if n: names[i]=n
            return names.get(i,i)
        return tok
    for line in open(path, errors='replace'):
        line=line.rstrip('\n')
        if line.startswith('fn='): cur=name(line[3:]); continue
        if line.startswith('cfn='): cfn=name(line[4:]); continue
        if line.startswith('calls='): in_call=True; continue
        if line and (line[0].isdigit() or line[0] in '+-*'):
            parts=line.split()
            if len(parts)<2: continue
            c=int(parts[1])
            if in_call: callc[(cur,cfn)]+=c; in_call=False
            else: selfc[cur]+=c; total+=c
    incl=collections.Counter(selfc)
    for (f,g),c in callc.items():
        if f!=g and not (f.split("'")[0]==g.split("'")[0]): incl[f]+=c
    return selfc, incl, total
